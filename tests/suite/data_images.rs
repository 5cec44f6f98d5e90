//! Image datasets: IDX (raw and gzip) and class folders, every error a user can meet, the
//! shipped Fashion-MNIST t10k split, batches in [-1, 1] with flips, and the PNG grid writer.
//! Fixtures: `tests/fixtures/images/` (4 images of 5×4 with labels 0 3 1 2; PNGs of 6×6).

use std::path::{Path, PathBuf};

use candle_core::Device;
use ssmlab::data::DataError;
use ssmlab::data::images::{
    FASHION_CLASSES, GRID_GAP, ImageSet, ImageSource, grid_size, load_idx, load_image_folder,
    load_images, resolve_images, save_grid_png,
};

use crate::common::fixture;

fn img(rel: &str) -> PathBuf {
    fixture(&format!("images/{rel}"))
}

/// The fixture's pixels: byte i of the IDX body is (37 i + 7) mod 256.
fn fixture_pixels() -> Vec<u8> {
    (0..4 * 5 * 4).map(|i| ((i * 37 + 7) % 256) as u8).collect()
}

fn err_text(r: Result<ImageSet, DataError>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn idx_raw_and_gzip_load_the_same() {
    let raw = load_idx(
        &img("idx/tiny-images-idx3-ubyte"),
        &img("idx/tiny-labels-idx1-ubyte"),
    )
    .unwrap();
    assert_eq!((raw.len(), raw.h, raw.w, raw.channels), (4, 5, 4, 1));
    assert_eq!(raw.pixels, fixture_pixels());
    assert_eq!(raw.labels, [0, 3, 1, 2]);
    // not a Fashion-MNIST name: classes 0..=max label, named by number
    assert_eq!(raw.class_names, ["0", "1", "2", "3"]);
    let gz = load_idx(
        &img("idx-gz/fashion/t10k-images-idx3-ubyte.gz"),
        &img("idx-gz/fashion/t10k-labels-idx1-ubyte.gz"),
    )
    .unwrap();
    assert_eq!(gz.pixels, raw.pixels);
    assert_eq!(gz.labels, raw.labels);
    // the folder is named fashion: the ten Fashion-MNIST names
    assert_eq!(gz.num_classes(), 10);
    assert_eq!(gz.class_names[9], "Ankle boot");
    // load_images on the file finds the labels beside it; on the folder it says t10k was picked
    let a = load_images(&img("idx-gz/fashion/t10k-images-idx3-ubyte.gz"), None).unwrap();
    assert_eq!(a.pixels, raw.pixels);
    match resolve_images(&img("idx-gz/fashion")).unwrap() {
        ImageSource::Idx {
            images,
            labels,
            note,
        } => {
            assert!(images.ends_with("t10k-images-idx3-ubyte.gz"));
            assert!(labels.ends_with("t10k-labels-idx1-ubyte.gz"));
            let note = note.unwrap();
            assert!(
                note.contains("t10k") && note.contains("no train-*"),
                "{note}"
            );
        }
        other => panic!("{other:?}"),
    }
    let b = load_images(&img("idx-gz/fashion"), Some((10, 8))).unwrap();
    assert_eq!((b.h, b.w, b.len()), (10, 8, 4), "resized on request");
}

#[test]
fn idx_errors_name_the_file_and_the_problem() {
    // corrupt gzip
    let e = err_text(load_idx(
        &img("bad/corrupt-images-idx3-ubyte.gz"),
        &img("bad/corrupt-labels-idx1-ubyte.gz"),
    ));
    assert!(
        e.contains("corrupt-images-idx3-ubyte.gz") && e.contains("corrupt gzip"),
        "{e}"
    );
    // truncated body
    let e = err_text(load_idx(
        &img("bad/truncated-images-idx3-ubyte"),
        &img("bad/truncated-labels-idx1-ubyte"),
    ));
    assert!(
        e.contains("truncated-images-idx3-ubyte")
            && e.contains("truncated")
            && e.contains("4 × 5 × 4 = 80 bytes")
            && e.contains("holds 70"),
        "{e}"
    );
    // wrong magic: the labels file given as images, and the other way round
    let e = err_text(load_idx(
        &img("idx/tiny-labels-idx1-ubyte"),
        &img("idx/tiny-labels-idx1-ubyte"),
    ));
    assert!(
        e.contains("wrong magic number 0x00000801") && e.contains("labels file"),
        "{e}"
    );
    let e = err_text(load_idx(
        &img("idx/tiny-images-idx3-ubyte"),
        &img("idx/tiny-images-idx3-ubyte"),
    ));
    assert!(e.contains("wrong magic number 0x00000803"), "{e}");
    // a PNG is not IDX
    let e = err_text(load_idx(
        &img("folder/circle/c1.png"),
        &img("idx/tiny-labels-idx1-ubyte"),
    ));
    assert!(e.contains("c1.png") && e.contains("not an IDX file"), "{e}");

    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    // image/label count mismatch
    let mut lab = 0x801u32.to_be_bytes().to_vec();
    lab.extend(3u32.to_be_bytes());
    lab.extend([0, 1, 2]);
    std::fs::write(d.join("three-labels-idx1-ubyte"), &lab).unwrap();
    let e = err_text(load_idx(
        &img("idx/tiny-images-idx3-ubyte"),
        &d.join("three-labels-idx1-ubyte"),
    ));
    assert!(
        e.contains("three-labels-idx1-ubyte") && e.contains("3 labels for 4 images"),
        "{e}"
    );
    // a label out of range in a Fashion-MNIST file
    let fdir = d.join("fashion");
    std::fs::create_dir(&fdir).unwrap();
    std::fs::copy(
        img("idx/tiny-images-idx3-ubyte"),
        fdir.join("x-images-idx3-ubyte"),
    )
    .unwrap();
    let mut lab = 0x801u32.to_be_bytes().to_vec();
    lab.extend(4u32.to_be_bytes());
    lab.extend([0, 1, 12, 2]);
    std::fs::write(fdir.join("x-labels-idx1-ubyte"), &lab).unwrap();
    let e = err_text(load_images(&fdir.join("x-images-idx3-ubyte"), None));
    assert!(
        e.contains("x-labels-idx1-ubyte") && e.contains("label 12 of image 2 is out of range"),
        "{e}"
    );
    // no labels file beside the images
    std::fs::copy(
        img("idx/tiny-images-idx3-ubyte"),
        d.join("lonely-images-idx3-ubyte"),
    )
    .unwrap();
    let e = err_text(load_images(&d.join("lonely-images-idx3-ubyte"), None));
    assert!(
        e.contains("lonely-labels-idx1-ubyte") && e.contains("no labels file"),
        "{e}"
    );
    // a missing path
    let e = err_text(load_images(&d.join("nope"), None));
    assert!(e.contains("nope") && e.contains("does not exist"), "{e}");
}

#[test]
fn image_folders_load_with_classes_sizes_and_channels() {
    let grey = load_image_folder(&img("folder"), None, 1).unwrap();
    assert_eq!((grey.len(), grey.h, grey.w, grey.channels), (3, 6, 6, 1));
    assert_eq!(grey.class_names, ["circle", "square"]);
    assert_eq!(grey.labels, [0, 0, 1]);
    assert_eq!(grey.class_counts(), [2, 1]);
    // c2 is the negative of c1
    assert!(
        grey.image(0)
            .iter()
            .zip(grey.image(1))
            .all(|(a, b)| *a as u16 + *b as u16 == 255)
    );
    let rgb = load_image_folder(&img("folder"), None, 3).unwrap();
    assert_eq!(rgb.image_len(), 3 * 36);
    // the RGB square: CHW planes red = pattern, green = 0, blue = 255 - pattern
    let sq = rgb.image(2);
    assert_eq!(sq[0], 10);
    assert_eq!(sq[36 + 7], 0);
    assert_eq!(sq[7], 200);
    assert_eq!(sq[2 * 36 + 7], 55);
    // grey copies of the grey images are the same in all three planes
    assert_eq!(&rgb.image(0)[..36], &rgb.image(0)[36..72]);
    // load_images: the folder's first image is grey, so grey
    let auto = load_images(&img("folder"), None).unwrap();
    assert_eq!(auto.channels, 1);
    let big = load_image_folder(&img("folder"), Some((12, 9)), 1).unwrap();
    assert_eq!((big.h, big.w, big.pixels.len()), (12, 9, 3 * 12 * 9));

    // mixed sizes without a size
    let e = err_text(load_image_folder(&img("mixed"), None, 1));
    assert!(
        e.contains("2-big.png") && e.contains("1-small.png") && e.contains("differ in size"),
        "{e}"
    );
    assert_eq!(
        load_image_folder(&img("mixed"), Some((7, 7)), 1)
            .unwrap()
            .len(),
        2
    );
    // a .png that is not an image
    let e = err_text(load_image_folder(&img("not-an-image"), None, 1));
    assert!(
        e.contains("readme.png") && e.contains("cannot decode"),
        "{e}"
    );
    // empty folder, empty class folder, bad channel count
    let tmp = tempfile::tempdir().unwrap();
    let e = err_text(load_image_folder(tmp.path(), None, 1));
    assert!(e.contains("holds no PNG/JPEG files"), "{e}");
    std::fs::create_dir(tmp.path().join("empty-class")).unwrap();
    let e = err_text(load_image_folder(tmp.path(), None, 1));
    assert!(
        e.contains("empty-class") && e.contains("class folder holds no PNG/JPEG"),
        "{e}"
    );
    let e = err_text(load_image_folder(&img("folder"), None, 2));
    assert!(e.contains("channels must be 1"), "{e}");
    // a flat folder of images is one class named after it
    let flat = load_image_folder(&img("folder/circle"), None, 1).unwrap();
    assert_eq!(
        (flat.class_names.as_slice(), flat.len()),
        (&["circle".to_string()][..], 2)
    );
}

fn shipped() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("datasets/fashion-mnist")
}

#[test]
fn shipped_fashion_mnist_t10k() {
    let set = load_images(&shipped(), None).unwrap();
    assert_eq!((set.len(), set.h, set.w, set.channels), (10_000, 28, 28, 1));
    assert_eq!(set.class_counts(), vec![1000; 10]);
    assert_eq!(set.class_names, FASHION_CLASSES);
    assert_eq!(&set.labels[..10], &[9, 2, 1, 1, 6, 1, 4, 6, 5, 7]);
    // measured once (numpy over the decompressed file: 0.286849)
    let m = set.mean_pixel();
    assert!((m - 0.28685).abs() < 0.002, "mean pixel {m}");
    let first = set.subset(&[0, 1]);
    assert_eq!(first.len(), 2);
    assert_eq!(first.image(1), set.image(1));
}

#[test]
fn batches_scale_to_minus_one_one_and_flip() {
    let set = load_idx(
        &img("idx/tiny-images-idx3-ubyte"),
        &img("idx/tiny-labels-idx1-ubyte"),
    )
    .unwrap();
    let (t, labels) = set
        .batch(&[3, 1], Some(&[false, true]), &Device::Cpu)
        .unwrap();
    assert_eq!(t.dims(), &[2, 1, 5, 4]);
    assert_eq!(labels, [2, 3]);
    let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let px = fixture_pixels();
    let f = |b: u8| b as f32 / 127.5 - 1.0;
    for y in 0..5 {
        for x in 0..4 {
            // image 3 as is
            assert_eq!(v[y * 4 + x], f(px[3 * 20 + y * 4 + x]));
            // image 1 mirrored: column x holds column 3 - x
            assert_eq!(v[20 + y * 4 + x], f(px[20 + y * 4 + (3 - x)]));
        }
    }
    assert!(v.iter().all(|x| (-1.0..=1.0).contains(x)));
    let (t0, _) = set.batch(&[0], None, &Device::Cpu).unwrap();
    let z = t0.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(z[0], f(7));
    // 0 → -1, 255 → 1 exactly
    assert_eq!((f(0), f(255)), (-1.0, 1.0));
    assert!(set.batch(&[4], None, &Device::Cpu).is_err());
    assert!(set.batch(&[0, 1], Some(&[true]), &Device::Cpu).is_err());
}

fn read_png(p: &Path) -> image::DynamicImage {
    image::ImageReader::open(p).unwrap().decode().unwrap()
}

#[test]
fn grid_png_round_trip() {
    let tmp = tempfile::tempdir().unwrap();
    // 3 grey 2×3 tiles on a 2×2 grid, scale 2: values -1, 0, 1 by tile, last tile empty
    let (h, w) = (2, 3);
    let mut v = Vec::new();
    for k in 0..3 {
        v.extend(std::iter::repeat_n(k as f32 - 1.0, h * w));
    }
    v[0] = 5.0; // clipped to 1
    let p = tmp.path().join("grid.png");
    save_grid_png(&p, &v, 3, 1, h, w, 2, 2, 2).unwrap();
    let g = read_png(&p);
    assert_eq!(g.color(), image::ColorType::L8);
    let (gh, gw) = grid_size(h, w, 2, 2, 2);
    assert_eq!((g.height() as usize, g.width() as usize), (gh, gw));
    assert_eq!((gh, gw), (10, 14));
    let g = g.to_luma8();
    let at = |x: u32, y: u32| g.get_pixel(x, y).0[0];
    assert_eq!(at(0, 0), 255, "clipped");
    assert_eq!(at(2, 1), 0, "tile 0 is -1");
    assert_eq!(at(6, 0), GRID_GAP, "the 1-px gap, scaled");
    assert_eq!(at(7, 0), GRID_GAP);
    assert_eq!(at(8, 3), 128, "tile 1 is 0 → 128");
    assert_eq!(at(0, 4), GRID_GAP, "gap row");
    assert_eq!(at(1, 6), 255, "tile 2 is 1");
    assert_eq!(at(13, 9), 0, "no tile 3: black");

    // RGB: channel-major input becomes RGB pixels
    let rgb: Vec<f32> = [-1.0f32, 0.0, 1.0]
        .iter()
        .flat_map(|c| std::iter::repeat_n(*c, 4))
        .collect();
    let p = tmp.path().join("rgb.png");
    save_grid_png(&p, &rgb, 1, 3, 2, 2, 1, 1, 3).unwrap();
    let g = read_png(&p).to_rgb8();
    assert_eq!(g.dimensions(), (6, 6));
    assert_eq!(g.get_pixel(5, 5).0, [0, 128, 255]);

    // wrong lengths and overfull grids are errors naming the file
    let e = save_grid_png(&p, &rgb, 2, 3, 2, 2, 1, 1, 1)
        .unwrap_err()
        .to_string();
    assert!(e.contains("rgb.png") && e.contains("12 values"), "{e}");
    let e = save_grid_png(&p, &v, 3, 1, h, w, 1, 2, 1)
        .unwrap_err()
        .to_string();
    assert!(e.contains("do not fit a 1×2 grid"), "{e}");
}
