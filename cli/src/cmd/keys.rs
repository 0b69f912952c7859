//! `knapsec keys …`: the static key pairs that authenticate the parties of a deployment
//! (see `knapsec_net::keys`).

use crate::context::Context;
use anyhow::Context as _;
use clap::Subcommand;
use knapsec_core::Role;
use knapsec_net::keys::{self, KeyPair};
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: KeysCommand,
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Make a party's key pair: DIR/ROLE.key (private, keep it on that host) and DIR/ROLE.pub
    /// (public, hand it to the other two parties).
    Gen {
        /// The role the key is for: client, server or helper.
        #[arg(long)]
        role: Role,
        /// Folder to write the two files into (created if missing).
        #[arg(short, long, value_name = "DIR")]
        output: PathBuf,
        /// Replace an existing private key (the old public key stops working).
        #[arg(long)]
        force: bool,
    },
    /// Print the role and fingerprint of a public key file, to compare it over another channel.
    Show {
        /// The public key file.
        file: PathBuf,
        /// The role the file must be for.
        #[arg(long)]
        role: Role,
    },
}

pub fn run(args: Args, ctx: &Context) -> anyhow::Result<()> {
    match args.command {
        KeysCommand::Gen {
            role,
            output,
            force,
        } => {
            let kp = KeyPair::generate()?;
            let (private, public) = kp
                .save(&output, role, force)
                .with_context(|| format!("cannot write the {role} key pair"))?;
            if !ctx.global.quiet {
                eprintln!(
                    "wrote {} (private: keep it on the {role}'s host) and {} (public: give it to the other parties); fingerprint {}",
                    private.display(),
                    public.display(),
                    kp.public.fingerprint()
                );
            }
            Ok(())
        }
        KeysCommand::Show { file, role } => {
            let key = keys::load_public(&file, role)?;
            println!("{role} {}", key.fingerprint());
            Ok(())
        }
    }
}
