//! The data-set loaders on the small committed samples of each format
//! (`fixtures/data/make_data_samples.py` made them; the pixel formula is recomputed here).

use knapsec_nn::data::{DataSpec, Pixels, Split};
use std::path::PathBuf;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/data")
}

fn pixel(i: usize, c: usize, y: usize, x: usize) -> u8 {
    ((i * 37 + c * 11 + y * 5 + x * 3) % 256) as u8
}

fn u8_pixels(p: &Pixels) -> &[u8] {
    match p {
        Pixels::U8(v) => v,
        Pixels::F32(_) => panic!("expected raw bytes"),
    }
}

#[test]
fn idx_plain_and_gzip() {
    let spec = DataSpec::FashionMnist(Some(fixtures().join("idx")));
    let train = spec.load(Split::Train).unwrap();
    assert_eq!(
        (train.len(), train.shape, train.classes),
        (4, (1, 28, 28), 10)
    );
    assert_eq!(train.labels, vec![0, 3, 6, 9]);
    let px = u8_pixels(&train.pixels);
    assert_eq!(px[28 * 28 + 2 * 28 + 5], pixel(1, 0, 2, 5));
    let test = spec.load(Split::Test).unwrap(); // stored gzip-compressed
    assert_eq!(test.len(), 3);
    assert_eq!(
        u8_pixels(&test.pixels)[2 * 784 + 27 * 28 + 27],
        pixel(2, 0, 27, 27)
    );
    let (x, y) = test.to_tensors(tch::Device::Cpu).unwrap();
    assert_eq!(x.size(), vec![3, 1, 28, 28]);
    assert_eq!(y.size(), vec![3]);
    let v = x.double_value(&[0, 0, 0, 1]);
    let expect = (pixel(0, 0, 0, 1) as f64 / 255.0 - 0.2860) / 0.3530;
    assert!((v - expect).abs() < 1e-5, "{v} vs {expect}");
}

#[test]
fn cifar10_and_cifar100_binary() {
    let c10 = DataSpec::Cifar10(fixtures().join("cifar10"))
        .load(Split::Train)
        .unwrap();
    assert_eq!((c10.len(), c10.shape, c10.classes), (10, (3, 32, 32), 10));
    assert_eq!(&c10.labels[..2], &[0, 3]);
    assert_eq!(
        u8_pixels(&c10.pixels)[3072 + 2 * 1024 + 31 * 32 + 7],
        pixel(1, 2, 31, 7)
    );
    let c100 = DataSpec::Cifar100(fixtures().join("cifar100"))
        .load(Split::Test)
        .unwrap();
    assert_eq!((c100.len(), c100.classes), (2, 100));
    assert_eq!(c100.labels, vec![0, 3]); // the fine label, not the coarse one
}

#[test]
fn image_folder_resizes_and_crops() {
    let set = DataSpec::Folder {
        dir: fixtures().join("folder"),
        size: 16,
    }
    .load(Split::Test)
    .unwrap();
    assert_eq!((set.len(), set.shape, set.classes), (4, (3, 16, 16), 2));
    assert_eq!(set.labels, vec![0, 0, 1, 1]);
}

#[test]
fn bad_folders_give_clear_errors() {
    let e = DataSpec::Cifar10(fixtures().join("idx"))
        .load(Split::Test)
        .unwrap_err()
        .to_string();
    assert!(e.contains("test_batch.bin"), "{e}");
    let e = DataSpec::Mnist(fixtures().join("cifar10"))
        .load(Split::Train)
        .unwrap_err()
        .to_string();
    assert!(e.contains("train-images-idx3-ubyte"), "{e}");
    let e = DataSpec::Folder {
        dir: fixtures().join("idx"),
        size: 8,
    }
    .load(Split::Train)
    .unwrap_err()
    .to_string();
    assert!(e.contains("no class sub-folders"), "{e}");
}
