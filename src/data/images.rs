//! Image datasets for diffusion training: IDX files (MNIST / Fashion-MNIST, raw or gzip) and
//! folders of PNG/JPEG files with one subfolder per class; batches as (B, C, H, W) tensors in
//! [-1, 1]; sample grids written as PNG.
//!
//! Pixels are kept as bytes, image-major and channel-major inside an image (CHW), so a 60 000
//! image Fashion-MNIST set is 47 MB.

use std::io::Read;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};

use super::{DataError, Result};

/// Class names of Fashion-MNIST, by label.
pub const FASHION_CLASSES: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

/// A labelled image set in memory.
#[derive(Debug, Clone)]
pub struct ImageSet {
    pub h: usize,
    pub w: usize,
    pub channels: usize,
    /// n × channels × h × w bytes, image-major, channel-major inside an image (CHW)
    pub pixels: Vec<u8>,
    pub labels: Vec<u32>,
    pub class_names: Vec<String>,
}

impl ImageSet {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    pub fn num_classes(&self) -> usize {
        self.class_names.len()
    }

    /// Bytes of one image.
    pub fn image_len(&self) -> usize {
        self.channels * self.h * self.w
    }

    /// The CHW bytes of image `i`.
    pub fn image(&self, i: usize) -> &[u8] {
        let n = self.image_len();
        &self.pixels[i * n..(i + 1) * n]
    }

    /// images `idx` as a (B, C, H, W) f32 tensor scaled to [-1, 1]; `flip[i]` mirrors image i horizontally
    pub fn batch(
        &self,
        idx: &[usize],
        flip: Option<&[bool]>,
        dev: &Device,
    ) -> candle_core::Result<(Tensor, Vec<u32>)> {
        if let Some(f) = flip
            && f.len() != idx.len()
        {
            candle_core::bail!(
                "ImageSet::batch: {} flip flags for {} images",
                f.len(),
                idx.len()
            );
        }
        let (c, h, w) = (self.channels, self.h, self.w);
        let mut out = Vec::with_capacity(idx.len() * c * h * w);
        let mut labels = Vec::with_capacity(idx.len());
        for (k, &i) in idx.iter().enumerate() {
            if i >= self.len() {
                candle_core::bail!(
                    "ImageSet::batch: image {i} out of range ({} images)",
                    self.len()
                );
            }
            let img = self.image(i);
            let mirror = flip.is_some_and(|f| f[k]);
            for row in img.chunks_exact(w) {
                if mirror {
                    out.extend(row.iter().rev().map(|&p| p as f32 / 127.5 - 1.0));
                } else {
                    out.extend(row.iter().map(|&p| p as f32 / 127.5 - 1.0));
                }
            }
            labels.push(self.labels[i]);
        }
        let t = Tensor::from_vec(out, (idx.len(), c, h, w), dev)?;
        Ok((t, labels))
    }

    /// The images `idx` (in that order) as a new set with the same classes (fixtures,
    /// evaluation subsets). Panics on an index out of range.
    pub fn subset(&self, idx: &[usize]) -> ImageSet {
        let mut pixels = Vec::with_capacity(idx.len() * self.image_len());
        for &i in idx {
            pixels.extend_from_slice(self.image(i));
        }
        ImageSet {
            h: self.h,
            w: self.w,
            channels: self.channels,
            pixels,
            labels: idx.iter().map(|&i| self.labels[i]).collect(),
            class_names: self.class_names.clone(),
        }
    }

    /// Mean pixel value in [0, 1] (a quick check that a set loaded right).
    pub fn mean_pixel(&self) -> f64 {
        if self.pixels.is_empty() {
            return 0.0;
        }
        self.pixels.iter().map(|&p| p as u64).sum::<u64>() as f64
            / (self.pixels.len() as f64 * 255.0)
    }

    /// Images per class, by class id.
    pub fn class_counts(&self) -> Vec<usize> {
        let mut c = vec![0; self.num_classes()];
        for &l in &self.labels {
            c[l as usize] += 1;
        }
        c
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> DataError + '_ {
    move |source| DataError::Io {
        path: path.into(),
        err: source,
    }
}

fn idx_err(path: &Path, msg: impl Into<String>) -> DataError {
    DataError::Idx {
        path: path.into(),
        msg: msg.into(),
    }
}

fn img_err(path: &Path, msg: impl Into<String>) -> DataError {
    DataError::Image {
        path: path.into(),
        msg: msg.into(),
    }
}

/// Reads an IDX file (gunzipped when it starts with the gzip magic number) no further than
/// its header promises: a gzip bomb or `/dev/zero` is never decompressed or read past that,
/// and a promise larger than the memory limit is refused before anything is allocated.
fn read_idx(path: &Path, dims: usize, what: &str) -> Result<Vec<u8>> {
    if !path.exists() {
        return Err(DataError::ImagesNotFound(path.into()));
    }
    // Only regular files: a FIFO would block, a device never end.
    if !std::fs::metadata(path).map_err(io_err(path))?.is_file() {
        return Err(idx_err(path, "not a regular file"));
    }
    let mut f = std::fs::File::open(path).map_err(io_err(path))?;
    let mut magic = [0u8; 2];
    let n = f.read(&mut magic).map_err(io_err(path))?;
    let f = std::fs::File::open(path).map_err(io_err(path))?;
    let gz = n == 2 && magic == [0x1f, 0x8b];
    let mut r: Box<dyn Read> = if gz {
        Box::new(flate2::read::MultiGzDecoder::new(std::io::BufReader::new(
            f,
        )))
    } else {
        Box::new(f)
    };
    let read_err = |e: std::io::Error| {
        if gz {
            idx_err(
                path,
                format!(
                    "corrupt gzip data ({e}); the file is damaged or incomplete: download it \
                     again (`gzip -t` checks a file)"
                ),
            )
        } else {
            io_err(path)(e)
        }
    };
    let head = 4 + 4 * dims;
    let mut bytes = Vec::with_capacity(head);
    (&mut r)
        .take(head as u64)
        .read_to_end(&mut bytes)
        .map_err(read_err)?;
    let body = match idx_header(path, &bytes, dims, what) {
        Ok((_, body)) => body,
        // A damaged gzip stream decompresses to garbage before its checksum fails: say
        // "corrupt gzip" when the stream fails within the next 64 MiB, not "wrong magic".
        Err(e) if gz => {
            let mut sink = std::io::sink();
            std::io::copy(&mut (&mut r).take(64 << 20), &mut sink).map_err(read_err)?;
            return Err(e);
        }
        Err(e) => return Err(e),
    };
    let (limit, origin) =
        crate::engine::memory::limit().map_err(|e| DataError::Invalid(e.to_string()))?;
    if body as u64 > limit {
        return Err(idx_err(
            path,
            format!(
                "the header promises {} of data, more than {origin} ({}): not a usable IDX \
                 {what} file",
                crate::engine::memory::human(body as u64),
                crate::engine::memory::human(limit)
            ),
        ));
    }
    (&mut r)
        .take(body as u64)
        .read_to_end(&mut bytes)
        .map_err(read_err)?;
    Ok(bytes)
}

/// Parses an IDX header: checks the magic number (unsigned bytes, `dims` dimensions) and
/// returns the dimensions and the number of data bytes they promise (checked arithmetic).
#[allow(
    clippy::expect_used,
    clippy::unwrap_used,
    reason = "slices of exactly four bytes, after a length check"
)]
fn idx_header(path: &Path, bytes: &[u8], dims: usize, what: &str) -> Result<(Vec<usize>, usize)> {
    let want = 0x0800u32 + dims as u32;
    if bytes.len() < 4 {
        return Err(idx_err(
            path,
            format!(
                "truncated: {} bytes, not even an IDX magic number; expected an IDX {what} file",
                bytes.len()
            ),
        ));
    }
    let magic = u32::from_be_bytes(bytes[0..4].try_into().expect("4 bytes"));
    if magic != want {
        let hint = match magic {
            0x0801 => " (that is an IDX labels file: give the images file)".to_string(),
            0x0803 => " (that is an IDX images file: give the labels file)".to_string(),
            m if m >> 16 == 0 && (m >> 8) & 0xff != 0x08 => {
                " (IDX with non-byte values is not supported)".to_string()
            }
            _ => " (not an IDX file)".to_string(),
        };
        return Err(idx_err(
            path,
            format!(
                "wrong magic number 0x{magic:08x}: an IDX {what} file starts with 0x{want:08x}{hint}"
            ),
        ));
    }
    let head = 4 + 4 * dims;
    if bytes.len() < head {
        return Err(idx_err(
            path,
            format!(
                "truncated: the header needs {head} bytes, the file holds {}",
                bytes.len()
            ),
        ));
    }
    let shape: Vec<usize> = (0..dims)
        .map(|d| u32::from_be_bytes(bytes[4 + 4 * d..8 + 4 * d].try_into().expect("4")) as usize)
        .collect();
    let body = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| {
            idx_err(
                path,
                format!("the header's dimensions {shape:?} overflow: not an IDX {what} file"),
            )
        })?;
    Ok((shape, body))
}

/// Parses a whole IDX file: [`idx_header`], and that the file holds as many bytes as the header
/// promises. Returns the dimensions and the data.
fn parse_idx<'a>(
    path: &Path,
    bytes: &'a [u8],
    dims: usize,
    what: &str,
) -> Result<(Vec<usize>, &'a [u8])> {
    let (shape, body) = idx_header(path, bytes, dims, what)?;
    let head = 4 + 4 * dims;
    if bytes.len() - head < body {
        let shape_s: Vec<String> = shape.iter().map(|s| s.to_string()).collect();
        return Err(idx_err(
            path,
            format!(
                "truncated: the header promises {} = {body} bytes of data, the file holds {}; \
                 the file is incomplete: download it again",
                shape_s.join(" × "),
                bytes.len() - head
            ),
        ));
    }
    Ok((shape, &bytes[head..head + body]))
}

fn mentions_fashion(p: &Path) -> bool {
    let name = |q: Option<&std::ffi::OsStr>| {
        q.is_some_and(|n| n.to_string_lossy().to_lowercase().contains("fashion"))
    };
    name(p.file_name()) || name(p.parent().and_then(|d| d.file_name()))
}

/// An IDX image file (idx3, u8, gzip or raw) plus its labels file (idx1), e.g. t10k-images-idx3-ubyte.gz + t10k-labels-idx1-ubyte.gz.
///
/// Classes are `0..=max label`; Fashion-MNIST files (the file or its folder name contains
/// "fashion") have the 10 [`FASHION_CLASSES`], other files the names "0", "1", ….
pub fn load_idx(images: &Path, labels: &Path) -> Result<ImageSet> {
    let ib = read_idx(images, 3, "images")?;
    let (shape, px) = parse_idx(images, &ib, 3, "images")?;
    let (n, h, w) = (shape[0], shape[1], shape[2]);
    if h == 0 || w == 0 {
        return Err(idx_err(images, format!("images of size {h}×{w}")));
    }
    let lb = read_idx(labels, 1, "labels")?;
    let (lshape, lab) = parse_idx(labels, &lb, 1, "labels")?;
    if lshape[0] != n {
        return Err(idx_err(
            labels,
            format!(
                "{} labels for {n} images in {}: the two files are not a pair",
                lshape[0],
                images.display()
            ),
        ));
    }
    let fashion = mentions_fashion(images);
    let max = lab.iter().copied().max().unwrap_or(0) as usize;
    let classes = if fashion {
        FASHION_CLASSES.len()
    } else {
        max + 1
    };
    if let Some(i) = lab.iter().position(|&l| l as usize >= classes) {
        return Err(idx_err(
            labels,
            format!(
                "label {} of image {i} is out of range: Fashion-MNIST has {classes} classes (0–{})",
                lab[i],
                classes - 1
            ),
        ));
    }
    let class_names = if fashion {
        FASHION_CLASSES.iter().map(|s| s.to_string()).collect()
    } else {
        (0..classes).map(|c| c.to_string()).collect()
    };
    Ok(ImageSet {
        h,
        w,
        channels: 1,
        pixels: px.to_vec(),
        labels: lab.iter().map(|&l| l as u32).collect(),
        class_names,
    })
}

fn is_image_file(p: &Path) -> bool {
    p.is_file()
        && p.extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| matches!(e.to_lowercase().as_str(), "png" | "jpg" | "jpeg"))
}

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io_err(dir))?
        .map(|e| e.map(|e| e.path()).map_err(io_err(dir)))
        .collect::<Result<_>>()?;
    v.retain(|p| {
        !p.file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with('.'))
    });
    v.sort();
    Ok(v)
}

/// Decodes one image file to `channels` (1 grey, 3 RGB) CHW bytes, resized to `size` if given.
pub fn decode_image(
    path: &Path,
    size: Option<(usize, usize)>,
    channels: usize,
) -> Result<(usize, usize, Vec<u8>)> {
    let img = image::ImageReader::open(path)
        .map_err(io_err(path))?
        .with_guessed_format()
        .map_err(io_err(path))?
        .decode()
        .map_err(|e| {
            img_err(
                path,
                format!("cannot decode the image ({e}); remove the file or replace it with a valid PNG/JPEG"),
            )
        })?;
    let img = match size {
        Some((h, w)) if (img.height() as usize, img.width() as usize) != (h, w) => {
            img.resize_exact(w as u32, h as u32, image::imageops::FilterType::Triangle)
        }
        _ => img,
    };
    let (w, h) = (img.width() as usize, img.height() as usize);
    let data = if channels == 1 {
        img.to_luma8().into_raw()
    } else {
        // HWC → CHW
        let rgb = img.to_rgb8().into_raw();
        let mut out = vec![0u8; 3 * h * w];
        for (i, px) in rgb.chunks_exact(3).enumerate() {
            for c in 0..3 {
                out[c * h * w + i] = px[c];
            }
        }
        out
    };
    Ok((h, w, data))
}

/// A folder with one subfolder per class (sorted names = class ids) of PNG/JPEG files, resized to `size` (h, w) if given (else all must share the first image's size), `channels` 1 (grey) or 3 (RGB).
///
/// A folder holding image files and no subfolders is one class named after the folder.
pub fn load_image_folder(
    dir: &Path,
    size: Option<(usize, usize)>,
    channels: usize,
) -> Result<ImageSet> {
    if channels != 1 && channels != 3 {
        return Err(DataError::Invalid(format!(
            "{}: channels must be 1 (grey) or 3 (RGB), not {channels}",
            dir.display()
        )));
    }
    if !dir.exists() {
        return Err(DataError::ImagesNotFound(dir.into()));
    }
    let entries = sorted_entries(dir)?;
    let class_dirs: Vec<PathBuf> = entries.iter().filter(|p| p.is_dir()).cloned().collect();
    let mut classes: Vec<(String, Vec<PathBuf>)> = Vec::new();
    if class_dirs.is_empty() {
        let files: Vec<PathBuf> = entries.into_iter().filter(|p| is_image_file(p)).collect();
        if !files.is_empty() {
            let name = dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "images".into());
            classes.push((name, files));
        }
    } else {
        for d in &class_dirs {
            let files: Vec<PathBuf> = sorted_entries(d)?
                .into_iter()
                .filter(|p| is_image_file(p))
                .collect();
            if files.is_empty() {
                return Err(img_err(
                    d,
                    "class folder holds no PNG/JPEG files; add images or remove the folder (class ids are the sorted folder names)",
                ));
            }
            let name = d
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            classes.push((name, files));
        }
    }
    if classes.is_empty() {
        return Err(img_err(
            dir,
            "the folder holds no PNG/JPEG files: give one subfolder per class with images in \
             each, or an IDX file",
        ));
    }
    let mut set = ImageSet {
        h: 0,
        w: 0,
        channels,
        pixels: Vec::new(),
        labels: Vec::new(),
        class_names: classes.iter().map(|(n, _)| n.clone()).collect(),
    };
    let mut first: Option<PathBuf> = None;
    for (c, (_, files)) in classes.iter().enumerate() {
        for f in files {
            let (h, w, data) = decode_image(f, size, channels)?;
            match &first {
                None => {
                    set.h = h;
                    set.w = w;
                    first = Some(f.clone());
                }
                Some(p0) if (h, w) != (set.h, set.w) => {
                    return Err(img_err(
                        f,
                        format!(
                            "is {h}×{w} (h×w) but {} is {}×{}: images differ in size; give a \
                             size to resize them all to (e.g. 28×28)",
                            p0.display(),
                            set.h,
                            set.w
                        ),
                    ));
                }
                Some(_) => {}
            }
            set.pixels.extend_from_slice(&data);
            set.labels.push(c as u32);
        }
    }
    Ok(set)
}

/// Where a user's image path resolves to.
#[derive(Debug, Clone, PartialEq)]
pub enum ImageSource {
    /// An IDX images file and its labels file.
    Idx {
        images: PathBuf,
        labels: PathBuf,
        /// Why this pair was picked when a folder held several.
        note: Option<String>,
    },
    /// A folder of class subfolders of PNG/JPEG files.
    Folder(PathBuf),
}

impl std::fmt::Display for ImageSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ImageSource::Idx {
                images,
                labels,
                note,
            } => {
                write!(f, "IDX {} + {}", images.display(), labels.display())?;
                if let Some(n) = note {
                    write!(f, " ({n})")?;
                }
                Ok(())
            }
            ImageSource::Folder(d) => write!(f, "image folder {}", d.display()),
        }
    }
}

/// The labels file beside an IDX images file: `…images-idx3…` → `…labels-idx1…`, with or
/// without `.gz`.
fn labels_for(images: &Path) -> Result<PathBuf> {
    let name = images
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let lname = name.replace("images-idx3", "labels-idx1");
    let dir = images.parent().unwrap_or(Path::new("."));
    let base = lname.trim_end_matches(".gz");
    for cand in [lname.clone(), base.to_string(), format!("{base}.gz")] {
        let p = dir.join(&cand);
        if p.is_file() {
            return Ok(p);
        }
    }
    Err(idx_err(
        images,
        format!(
            "no labels file beside it: expected {} (the IDX labels file of the same split)",
            dir.join(lname).display()
        ),
    ))
}

fn is_idx_images_name(p: &Path) -> bool {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .is_some_and(|n| {
            let n = n.trim_end_matches(".gz");
            n.ends_with("-images-idx3-ubyte") || n.ends_with("-images.idx3-ubyte")
        })
}

/// Resolves what a user points at (see [`load_images`]) without loading it.
pub fn resolve_images(path: &Path) -> Result<ImageSource> {
    if !path.exists() {
        return Err(DataError::ImagesNotFound(path.into()));
    }
    if path.is_file() {
        if !is_idx_images_name(path) {
            return Err(img_err(
                path,
                "not an image set: give an `*-images-idx3-ubyte[.gz]` file, a folder holding IDX \
                 files, or a folder with one subfolder of PNG/JPEG files per class",
            ));
        }
        return Ok(ImageSource::Idx {
            images: path.into(),
            labels: labels_for(path)?,
            note: None,
        });
    }
    let entries = sorted_entries(path)?;
    let idx: Vec<&PathBuf> = entries.iter().filter(|p| is_idx_images_name(p)).collect();
    if !idx.is_empty() {
        let starts = |pre: &str| {
            idx.iter().find(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(pre))
            })
        };
        let (pick, note) = if let Some(p) = starts("train-") {
            (p, "the train split".to_string())
        } else if let Some(p) = starts("t10k-") {
            (
                p,
                "the t10k split: there is no train-* file in this folder".to_string(),
            )
        } else {
            (&idx[0], "the first IDX images file by name".to_string())
        };
        return Ok(ImageSource::Idx {
            images: (*pick).clone(),
            labels: labels_for(pick)?,
            note: Some(note),
        });
    }
    Ok(ImageSource::Folder(path.into()))
}

/// What a user points at: an `*-images-idx3-ubyte[.gz]` file (labels file found beside it by name), a folder holding IDX pairs (prefers `train-*`, else `t10k-*`; say which), or a class-subfolder image folder.
///
/// [`resolve_images`] says which files this reads (`ImageSource` displays as a log line).
/// IDX images are resized to `size` too when it differs; a folder loads as RGB when its first
/// image (by name) has colour, else grey.
pub fn load_images(path: &Path, size: Option<(usize, usize)>) -> Result<ImageSet> {
    match resolve_images(path)? {
        ImageSource::Idx { images, labels, .. } => {
            let set = load_idx(&images, &labels)?;
            match size {
                Some(s) if s != (set.h, set.w) => Ok(resize_set(&set, s)),
                _ => Ok(set),
            }
        }
        ImageSource::Folder(dir) => {
            let channels = folder_channels(&dir)?;
            load_image_folder(&dir, size, channels)
        }
    }
}

/// 3 when the folder's first image has colour, else 1.
fn folder_channels(dir: &Path) -> Result<usize> {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for p in sorted_entries(&d)? {
            if is_image_file(&p) {
                let img = image::ImageReader::open(&p)
                    .map_err(io_err(&p))?
                    .with_guessed_format()
                    .map_err(io_err(&p))?
                    .decode()
                    .map_err(|e| {
                        img_err(&p, format!("cannot decode the image ({e}); remove the file or replace it with a valid PNG/JPEG"))
                    })?;
                return Ok(if img.color().has_color() { 3 } else { 1 });
            } else if p.is_dir() {
                stack.insert(0, p);
            }
        }
    }
    Ok(1)
}

#[allow(
    clippy::expect_used,
    clippy::unwrap_used,
    reason = "the buffer is w·h bytes by construction"
)]
fn resize_set(set: &ImageSet, (h, w): (usize, usize)) -> ImageSet {
    let mut out = ImageSet {
        h,
        w,
        pixels: Vec::with_capacity(set.len() * set.channels * h * w),
        ..set.clone()
    };
    out.pixels.clear();
    for i in 0..set.len() {
        let img = set.image(i);
        for c in 0..set.channels {
            let plane = &img[c * set.h * set.w..(c + 1) * set.h * set.w];
            let buf = image::GrayImage::from_raw(set.w as u32, set.h as u32, plane.to_vec())
                .expect("plane size");
            let r = image::imageops::resize(
                &buf,
                w as u32,
                h as u32,
                image::imageops::FilterType::Triangle,
            );
            out.pixels.extend_from_slice(r.as_raw());
        }
    }
    out
}

/// Grey value of the gap between grid tiles.
pub const GRID_GAP: u8 = 96;

/// Size in pixels (h, w) of a grid [`save_grid_png`] writes.
pub fn grid_size(h: usize, w: usize, rows: usize, cols: usize, scale: usize) -> (usize, usize) {
    (
        (rows * (h + 1) - 1) * scale.max(1),
        (cols * (w + 1) - 1) * scale.max(1),
    )
}

/// Writes `images` (n × c × h × w f32 in [-1,1]) as a rows×cols PNG grid with a 1-px gap, scaled up by `scale` (nearest).
///
/// Tiles are row-major; the gap (grey [`GRID_GAP`]) is one source pixel, so it is `scale`
/// pixels wide in the file ([`grid_size`]); tiles beyond `n` are black. Values outside
/// [-1, 1] are clipped. `c` 1 writes a grey PNG, 3 an RGB one.
#[allow(clippy::too_many_arguments)]
pub fn save_grid_png(
    path: &Path,
    images: &[f32],
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    rows: usize,
    cols: usize,
    scale: usize,
) -> Result<()> {
    let bad = |msg: String| Err(img_err(path, msg));
    if c != 1 && c != 3 {
        return bad(format!("a grid needs 1 or 3 channels, not {c}"));
    }
    if images.len() != n * c * h * w {
        return bad(format!(
            "{} values given for {n} images of {c}×{h}×{w} ({} expected)",
            images.len(),
            n * c * h * w
        ));
    }
    if n > rows * cols {
        return bad(format!("{n} images do not fit a {rows}×{cols} grid"));
    }
    if h == 0 || w == 0 || rows == 0 || cols == 0 || scale == 0 {
        return bad("empty grid (a zero size, row/column count or scale)".into());
    }
    let (gh, gw) = grid_size(h, w, rows, cols, 1);
    let mut grid = vec![GRID_GAP; gh * gw * c];
    for r in 0..rows {
        for q in 0..cols {
            let k = r * cols + q;
            for y in 0..h {
                for x in 0..w {
                    for ch in 0..c {
                        let v = if k < n {
                            let f = images[((k * c + ch) * h + y) * w + x];
                            ((f.clamp(-1.0, 1.0) + 1.0) * 127.5).round() as u8
                        } else {
                            0
                        };
                        grid[((r * (h + 1) + y) * gw + q * (w + 1) + x) * c + ch] = v;
                    }
                }
            }
        }
    }
    let (oh, ow) = (gh * scale, gw * scale);
    let mut out = vec![0u8; oh * ow * c];
    for y in 0..oh {
        for x in 0..ow {
            let s = ((y / scale) * gw + x / scale) * c;
            out[(y * ow + x) * c..(y * ow + x) * c + c].copy_from_slice(&grid[s..s + c]);
        }
    }
    let color = if c == 1 {
        image::ExtendedColorType::L8
    } else {
        image::ExtendedColorType::Rgb8
    };
    image::save_buffer_with_format(
        path,
        &out,
        ow as u32,
        oh as u32,
        color,
        image::ImageFormat::Png,
    )
    .map_err(|e| img_err(path, format!("cannot write the PNG: {e}")))
}
