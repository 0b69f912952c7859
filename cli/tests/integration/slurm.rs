//! Distortion extraction on a real Slurm cluster (issue 19): a single-node cluster started by
//! `scripts/slurm/local-cluster.sh` (Debian's Slurm and munge, this machine's real CPUs and
//! memory), `scripts/slurm/distortion.sh` submitting a small `resnet18-cifar` as a job array of
//! 4 shards with the merge behind `--dependency=afterok`, exactly as `docs/distortion.md`
//! shows. The merged table must equal an unsharded run bit for bit, also after one array task
//! was killed mid-run (`scancel --signal=KILL`), requeued (`scontrol requeue`) and resumed from
//! its checkpoint, which the test reads to prove that no finished work unit was redone.
//!
//! Needs root and `slurm-wlm` + `munge` installed (`.ci/run` installs them); elsewhere the test
//! says why it skips, or fails when `KNAPSEC_REQUIRE_SYSTEM_TESTS=1` (as in CI).
#![cfg(feature = "torch")]

use crate::support::{
    assert_tables_bitwise_equal, found, is_root, say, small_distortion, system_test_runs,
    wait_until,
};
use knapsec_nn::distortion::{Shard, store};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const TEST: &str = "distortion_job_array_on_a_local_slurm_cluster";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The cluster of one test run; stopped (all its daemons) on drop, also when the test fails.
struct Cluster {
    dir: PathBuf,
    conf: PathBuf,
}

impl Cluster {
    fn start(dir: &Path) -> Cluster {
        let out = Command::new(repo().join("scripts/slurm/local-cluster.sh"))
            .arg("start")
            .arg(dir)
            .output()
            .unwrap();
        let cluster = Cluster {
            dir: dir.to_path_buf(),
            conf: dir.join("slurm.conf"),
        };
        assert!(
            out.status.success(),
            "local-cluster.sh start failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            cluster.logs()
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            format!("export SLURM_CONF={}", cluster.conf.display())
        );
        cluster
    }

    /// A Slurm client command (or the submission script) talking to this cluster.
    fn cmd(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new(program);
        c.env("SLURM_CONF", &self.conf);
        c
    }

    fn run(&self, program: &str, args: &[&str]) -> String {
        let out = self.cmd(program).args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{program} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `JobState` of a job or array task (`12` or `12_3`).
    fn state(&self, job: &str) -> String {
        let text = self.run("scontrol", &["show", "job", job]);
        text.split_whitespace()
            .find_map(|w| w.strip_prefix("JobState="))
            .unwrap_or_else(|| panic!("no JobState for {job}: {text}"))
            .to_string()
    }

    /// Waits until `job` is in one of `states`; fails on a state outside `passing`.
    fn wait_for(&self, job: &str, states: &[&str], passing: &[&str], secs: u64, logs: &Path) {
        let start = Instant::now();
        loop {
            let s = self.state(job);
            if states.contains(&s.as_str()) {
                return;
            }
            assert!(
                passing.contains(&s.as_str()),
                "job {job} is {s}, expected {states:?}\n{}\n{}",
                job_logs(logs),
                self.logs()
            );
            assert!(
                start.elapsed() < Duration::from_secs(secs),
                "job {job} still {s} after {secs} s\n{}\n{}",
                job_logs(logs),
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits (at most 300 s) until the merge job of the run in `run` has completed.
    fn wait_merged(&self, merge: &str, run: &Path) {
        let underway = ["PENDING", "RUNNING", "CONFIGURING", "COMPLETING"];
        self.wait_for(merge, &["COMPLETED"], &underway, 300, run);
    }

    fn logs(&self) -> String {
        let mut s = String::new();
        for f in ["log/slurmctld.log", "log/slurmd.log"] {
            let text = std::fs::read_to_string(self.dir.join(f)).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(20).collect();
            s += &format!("--- {f} (last lines)\n");
            for l in tail.iter().rev() {
                s += l;
                s.push('\n');
            }
        }
        s
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new(repo().join("scripts/slurm/local-cluster.sh"))
            .arg("stop")
            .arg(&self.dir)
            .status();
    }
}

/// Every job log of a run folder.
fn job_logs(run: &Path) -> String {
    let mut s = String::new();
    if let Ok(rd) = std::fs::read_dir(run.join("logs")) {
        let mut files: Vec<_> = rd.flatten().map(|e| e.path()).collect();
        files.sort();
        for f in files {
            s += &format!(
                "--- {}\n{}",
                f.display(),
                std::fs::read_to_string(&f).unwrap_or_default()
            );
        }
    }
    s
}

/// The small configuration: `resnet18-cifar` at base width 4 on 16×16 greyscale inputs,
/// random weights and images, one worker (bitwise reproducible), 2 channels per work unit,
/// a checkpoint after every unit (so that a shard of 30 units can be killed after its first).
fn distortion_args() -> Vec<String> {
    small_distortion(&[
        "--samples",
        "16",
        "--batch",
        "8",
        "--seed",
        "3",
        "--chunk",
        "2",
        "--checkpoint-every",
        "0",
    ])
}

/// Submits the run with the script as the docs show it; returns (array job, merge job).
fn submit(cluster: &Cluster, run: &Path) -> (String, String) {
    let out = cluster
        .cmd(repo().join("scripts/slurm/distortion.sh"))
        .env("KNAPSEC", env!("CARGO_BIN_EXE_knapsec"))
        .args(["--shards", "4", "--dir"])
        .arg(run)
        .arg("-o")
        .arg(run.join("table.safetensors"))
        .args(["--sbatch", "--cpus-per-task=1", "--"])
        .args(distortion_args())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "distortion.sh: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ids = String::from_utf8_lossy(&out.stdout);
    let mut ids = ids.split_whitespace().map(str::to_string);
    let (Some(array), Some(merge), None) = (ids.next(), ids.next(), ids.next()) else {
        panic!("distortion.sh printed {ids:?}, not 'ARRAY MERGE'");
    };
    (array, merge)
}

/// Stops (`SIGSTOP`) every process that has `output` among its arguments; returns how many.
fn freeze_processes_writing(output: &Path) -> usize {
    let want = output.as_os_str().as_encoded_bytes();
    let mut frozen = 0;
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        if cmdline.split(|&b| b == 0).any(|arg| arg == want) {
            let stopped = Command::new("kill")
                .args(["-STOP", &pid.to_string()])
                .status()
                .is_ok_and(|s| s.success());
            frozen += usize::from(stopped);
        }
    }
    frozen
}

/// Work units of shard `index/count` in a checkpoint: (done, total).
fn units_done(partial: &Path, chunk: usize, index: usize, count: usize) -> (usize, usize) {
    let (table, _) = store::load(partial).unwrap();
    let shard = Shard { index, count };
    let mine: Vec<_> = store::units(&table, chunk)
        .into_iter()
        .filter(|u| shard.owns(u.id))
        .collect();
    let done = mine.iter().filter(|u| store::unit_done(&table, u)).count();
    (done, mine.len())
}

#[test]
fn distortion_job_array_on_a_local_slurm_cluster() {
    let missing: Vec<&str> = ["munged", "slurmctld", "slurmd", "sbatch", "scontrol"]
        .into_iter()
        .filter(|p| !found(p))
        .collect();
    let why = if !is_root() {
        Some("needs root (it starts munged, slurmctld and slurmd)".to_string())
    } else if !missing.is_empty() {
        Some(format!(
            "{} not installed (apt-get install slurm-wlm munge; .ci/run does)",
            missing.join(", ")
        ))
    } else {
        None
    };
    if !system_test_runs(TEST, why) {
        return;
    }
    let t0 = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    // The munge user must reach the cluster's socket below it.
    std::fs::set_permissions(
        tmp.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let cluster = Cluster::start(&tmp.path().join("cluster"));
    let started = t0.elapsed();

    // The reference: one unsharded run, outside Slurm.
    let whole = tmp.path().join("whole.safetensors");
    let out = Command::new(env!("CARGO_BIN_EXE_knapsec"))
        .arg("distortion")
        .args(distortion_args())
        .arg("-o")
        .arg(&whole)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let unsharded = t0.elapsed() - started;

    // 1. The job array and the merge, undisturbed.
    let run1 = tmp.path().join("run1");
    let (array, merge) = submit(&cluster, &run1);
    cluster.wait_merged(&merge, &run1);
    for i in 0..4 {
        assert_eq!(cluster.state(&format!("{array}_{i}")), "COMPLETED");
    }
    assert_tables_bitwise_equal(&run1.join("table.safetensors"), &whole);
    let first_run = t0.elapsed() - started - unsharded;

    // 2. Task 3 killed mid-run once it has checkpointed, requeued, resumed.
    let t1 = Instant::now();
    let run2 = tmp.path().join("run2");
    let (array, merge) = submit(&cluster, &run2);
    let task = format!("{array}_3");
    let partial = run2.join("part-3.safetensors.partial");
    wait_until(
        300,
        5,
        || {
            assert!(
                !run2.join("part-3.safetensors").exists(),
                "task 3 finished before it could be killed: make the configuration larger"
            );
            partial.exists()
        },
        || format!("task 3 wrote no checkpoint\n{}", job_logs(&run2)),
    );
    // Freeze the task at once, then kill it through Slurm: `scancel` goes through slurmctld
    // and slurmd, which can take long enough for the rest of a small shard to finish.
    assert!(
        freeze_processes_writing(&run2.join("part-3.safetensors")) > 0,
        "task 3's process not found\n{}",
        job_logs(&run2)
    );
    assert_eq!(cluster.state(&task), "RUNNING");
    cluster.run("scancel", &["--signal=KILL", &task]);
    cluster.wait_for(
        &task,
        &["CANCELLED", "FAILED"],
        &["RUNNING", "COMPLETING"],
        60,
        &run2,
    );
    assert!(
        !run2.join("part-3.safetensors").exists(),
        "the killed task left its shard table"
    );
    // What the killed task had checkpointed (the file is stable now: its writer is dead).
    let (done, total) = units_done(&partial, 2, 3, 4);
    assert!(
        done >= 1 && done < total,
        "the checkpoint holds {done} of {total} units: the kill was not mid-run"
    );
    let log = std::fs::read_to_string(run2.join("logs/part-3.log")).unwrap();
    assert!(!log.contains("restart 1"), "{log}");
    // Requeue it; a cancelled task fails the merge's afterok dependency for good, so the merge
    // is re-armed on the four tasks (as docs/distortion.md says).
    cluster.run("scontrol", &["requeue", &task]);
    let deps: Vec<String> = (0..4).map(|i| format!("{array}_{i}")).collect();
    cluster.run(
        "scontrol",
        &[
            "update",
            &format!("JobId={merge}"),
            &format!("Dependency=afterok:{}", deps.join(":")),
        ],
    );
    cluster.wait_merged(&merge, &run2);
    assert_eq!(cluster.state(&task), "COMPLETED");
    let log = std::fs::read_to_string(run2.join("logs/part-3.log")).unwrap();
    assert!(
        log.contains(&format!("shard 3/4, job {task}, restart 1")),
        "the task ran again after its requeue: {log}"
    );
    let resumed = format!(
        "{done} of {total} work units of this shard (3/4) already done, {} to run",
        total - done
    );
    assert!(
        log.contains(&resumed),
        "the requeued task resumed from the checkpoint (expected '{resumed}'): {log}"
    );
    let ran = format!(
        "{} work units run ({done} taken from the checkpoint)",
        total - done
    );
    assert!(
        log.contains(&ran),
        "the requeued task ran only the unfinished units (expected '{ran}'): {log}"
    );
    assert!(
        !partial.exists(),
        "the finished task removed its checkpoint"
    );
    assert_tables_bitwise_equal(&run2.join("table.safetensors"), &whole);
    let second_run = t1.elapsed();
    drop(cluster);
    say(&format!(
        "slurm test: cluster up in {:.1} s, unsharded run {:.1} s, job array + merge {:.1} s, \
         killed/requeued run {:.1} s (task 3 resumed {done} of {total} units), total {:.1} s",
        started.as_secs_f64(),
        unsharded.as_secs_f64(),
        first_run.as_secs_f64(),
        second_run.as_secs_f64(),
        t0.elapsed().as_secs_f64()
    ));
}
