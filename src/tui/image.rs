//! Images inside the TUI: a half-block widget of our own (always available; `▀` with the upper
//! pixel as foreground and the lower as background), the terminal graphics protocols of
//! ratatui-image (kitty, sixel, iTerm2) where the terminal has them, and the worker that lists
//! sample folders, decodes PNGs and encodes protocol images off the UI thread.
//!
//! Protocol choice: `SSMLAB_IMAGE_PROTOCOL` (halfblocks | kitty | sixel | iterm2 | auto) wins
//! over `image_protocol` in the settings file; `auto` queries the terminal once at start-up
//! (ratatui-image's `Picker::from_query_stdio`), except inside tmux, where it stays on half
//! blocks (a protocol named explicitly goes through tmux passthrough, which ratatui-image turns
//! on). A failed query falls back to half blocks. `P` cycles the protocol at run time.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ratatui::buffer::Buffer;
use ratatui::layout::Rect;
use ratatui::style::Color;
use ratatui::widgets::Widget;

use crate::runs::samples::{SampleSet, list_sample_sets};

/// A decoded image: RGB bytes, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Picture {
    pub w: usize,
    pub h: usize,
    /// The file was greyscale (`rgb` holds equal channels).
    pub grey: bool,
    pub rgb: Vec<u8>,
}

impl Picture {
    /// A picture from RGB bytes (`rgb.len() == 3 w h`).
    pub fn from_rgb(w: usize, h: usize, rgb: Vec<u8>) -> Picture {
        assert_eq!(rgb.len(), 3 * w * h, "RGB bytes for {w}×{h}");
        Picture {
            w,
            h,
            grey: false,
            rgb,
        }
    }

    /// A picture from grey bytes (`v.len() == w h`).
    pub fn from_grey(w: usize, h: usize, v: &[u8]) -> Picture {
        assert_eq!(v.len(), w * h, "grey bytes for {w}×{h}");
        Picture {
            w,
            h,
            grey: true,
            rgb: v.iter().flat_map(|&g| [g, g, g]).collect(),
        }
    }

    /// The `w`×`h` part at (`x`, `y`), clamped to the picture.
    pub fn crop(&self, x: usize, y: usize, w: usize, h: usize) -> Picture {
        let (x, y) = (x.min(self.w), y.min(self.h));
        let (w, h) = (w.min(self.w - x), h.min(self.h - y));
        let mut rgb = Vec::with_capacity(3 * w * h);
        for row in y..y + h {
            let i = 3 * (row * self.w + x);
            rgb.extend_from_slice(&self.rgb[i..i + 3 * w]);
        }
        Picture {
            w,
            h,
            grey: self.grey,
            rgb,
        }
    }

    pub fn pixel(&self, x: usize, y: usize) -> [u8; 3] {
        let i = 3 * (y * self.w + x);
        [self.rgb[i], self.rgb[i + 1], self.rgb[i + 2]]
    }

    #[allow(
        clippy::expect_used,
        clippy::unwrap_used,
        reason = "the buffer is w·h·3 bytes by construction"
    )]
    pub fn to_dynamic(&self) -> image::DynamicImage {
        let buf = image::RgbImage::from_raw(self.w as u32, self.h as u32, self.rgb.clone())
            .expect("sizes match");
        image::DynamicImage::ImageRgb8(buf)
    }
}

/// Decodes a PNG/JPEG file. Errors name the file.
pub fn decode_file(path: &Path) -> Result<Picture, String> {
    let img = image::ImageReader::open(path)
        .and_then(|r| r.with_guessed_format())
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?
        .decode()
        .map_err(|e| format!("cannot decode {}: {e}", path.display()))?;
    let grey = !img.color().has_color();
    let rgb = img.to_rgb8();
    Ok(Picture {
        w: rgb.width() as usize,
        h: rgb.height() as usize,
        grey,
        rgb: rgb.into_raw(),
    })
}

/// Size in half-block pixels (1 per cell across, 2 per cell down) of an `img_w`×`img_h` image
/// fitted into `cols`×`rows` cells with its aspect kept. Enlarging uses a whole factor (every
/// pixel the same size) unless that would leave more than a quarter of the room unused;
/// shrinking uses the exact factor.
pub fn fit(img_w: usize, img_h: usize, cols: usize, rows: usize) -> (usize, usize) {
    if img_w == 0 || img_h == 0 || cols == 0 || rows == 0 {
        return (0, 0);
    }
    let s = (cols as f64 / img_w as f64).min(2.0 * rows as f64 / img_h as f64);
    if s >= 1.0 && s.floor() / s >= 0.75 {
        let k = s.floor() as usize;
        (img_w * k, img_h * k)
    } else {
        let w = ((img_w as f64 * s).round() as usize).clamp(1, cols);
        let h = ((img_h as f64 * s).round() as usize).clamp(1, 2 * rows);
        (w, h)
    }
}

/// Resamples to `pw`×`ph`: each target pixel averages the source box it covers (area
/// averaging when shrinking, nearest neighbour when enlarging).
pub fn resample(p: &Picture, pw: usize, ph: usize) -> Vec<[u8; 3]> {
    let mut out = Vec::with_capacity(pw * ph);
    let span = |t: usize, n: usize, src: usize| {
        let a = t * src / n;
        let b = ((t + 1) * src / n).max(a + 1).min(src);
        (a, b)
    };
    for ty in 0..ph {
        let (y0, y1) = span(ty, ph, p.h);
        for tx in 0..pw {
            let (x0, x1) = span(tx, pw, p.w);
            let mut acc = [0u32; 3];
            for y in y0..y1 {
                for x in x0..x1 {
                    let px = p.pixel(x, y);
                    for c in 0..3 {
                        acc[c] += px[c] as u32;
                    }
                }
            }
            let n = ((y1 - y0) * (x1 - x0)) as u32;
            out.push([
                ((acc[0] + n / 2) / n) as u8,
                ((acc[1] + n / 2) / n) as u8,
                ((acc[2] + n / 2) / n) as u8,
            ]);
        }
    }
    out
}

/// Where an image of `img_w`×`img_h` pixels lands in `area` (centred) with half blocks.
pub fn halfblock_rect(img_w: usize, img_h: usize, area: Rect) -> Rect {
    let (pw, ph) = fit(img_w, img_h, area.width as usize, area.height as usize);
    let cw = pw as u16;
    let ch = ph.div_ceil(2) as u16;
    Rect {
        x: area.x + (area.width - cw) / 2,
        y: area.y + (area.height - ch) / 2,
        width: cw,
        height: ch,
    }
}

/// The half-block widget: the picture fitted and centred in the area. A cell shows two
/// pixels: `▀` in the upper pixel's colour over a background of the lower pixel's colour
/// (an odd last pixel row leaves the lower half the terminal's background).
///
/// With `shades` (`NO_COLOR`) no colour is used: a cell shows the grey level of its two pixels
/// as one of ` ░▒▓█` (the terminal's own foreground on its background).
pub struct HalfBlocks<'a> {
    pub picture: &'a Picture,
    pub shades: bool,
}

/// The shade character of a grey level (0 = background, 255 = full block).
pub fn shade(level: u8) -> &'static str {
    const SHADES: [&str; 5] = [" ", "░", "▒", "▓", "█"];
    SHADES[((level as usize * 5) / 256).min(4)]
}

fn luma(c: [u8; 3]) -> u32 {
    (299 * c[0] as u32 + 587 * c[1] as u32 + 114 * c[2] as u32) / 1000
}

impl Widget for HalfBlocks<'_> {
    fn render(self, area: Rect, buf: &mut Buffer) {
        let p = self.picture;
        let (pw, ph) = fit(p.w, p.h, area.width as usize, area.height as usize);
        let r = halfblock_rect(p.w, p.h, area);
        if pw == 0 || ph == 0 {
            return;
        }
        let px = resample(p, pw, ph);
        let color = |c: [u8; 3]| Color::Rgb(c[0], c[1], c[2]);
        for cy in 0..r.height as usize {
            for cx in 0..pw {
                if self.shades {
                    let top = luma(px[(2 * cy) * pw + cx]);
                    let bottom = if 2 * cy + 1 < ph {
                        luma(px[(2 * cy + 1) * pw + cx])
                    } else {
                        top
                    };
                    buf[(r.x + cx as u16, r.y + cy as u16)]
                        .set_symbol(shade(((top + bottom) / 2) as u8));
                    continue;
                }
                let top = px[(2 * cy) * pw + cx];
                let bottom = if 2 * cy + 1 < ph {
                    color(px[(2 * cy + 1) * pw + cx])
                } else {
                    Color::Reset
                };
                buf[(r.x + cx as u16, r.y + cy as u16)]
                    .set_symbol("▀")
                    .set_fg(color(top))
                    .set_bg(bottom);
            }
        }
    }
}

/// How images are drawn in a pane.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    Halfblocks,
    Kitty,
    Sixel,
    Iterm2,
}

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Halfblocks => "halfblocks",
            Protocol::Kitty => "kitty",
            Protocol::Sixel => "sixel",
            Protocol::Iterm2 => "iterm2",
        }
    }
    fn to_ratatui(self) -> ratatui_image::picker::ProtocolType {
        use ratatui_image::picker::ProtocolType as P;
        match self {
            Protocol::Halfblocks => P::Halfblocks,
            Protocol::Kitty => P::Kitty,
            Protocol::Sixel => P::Sixel,
            Protocol::Iterm2 => P::Iterm2,
        }
    }
    fn from_ratatui(p: ratatui_image::picker::ProtocolType) -> Protocol {
        use ratatui_image::picker::ProtocolType as P;
        match p {
            P::Halfblocks => Protocol::Halfblocks,
            P::Kitty => Protocol::Kitty,
            P::Sixel => Protocol::Sixel,
            P::Iterm2 => Protocol::Iterm2,
        }
    }
}

/// What the user asked for: detection, or one protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProtocolChoice {
    Auto,
    Fixed(Protocol),
}

impl ProtocolChoice {
    pub fn parse(s: &str) -> Result<ProtocolChoice, String> {
        Ok(match s.trim().to_lowercase().as_str() {
            "auto" | "" => ProtocolChoice::Auto,
            "halfblocks" | "halfblock" | "blocks" => ProtocolChoice::Fixed(Protocol::Halfblocks),
            "kitty" => ProtocolChoice::Fixed(Protocol::Kitty),
            "sixel" => ProtocolChoice::Fixed(Protocol::Sixel),
            "iterm2" | "iterm" => ProtocolChoice::Fixed(Protocol::Iterm2),
            other => {
                return Err(format!(
                    "image protocol `{other}` is not one of halfblocks, kitty, sixel, iterm2, auto"
                ));
            }
        })
    }
}

/// The image output of this terminal: the detected protocol, the one in use, and the
/// ratatui-image picker (font size, tmux passthrough) when graphics are possible.
#[derive(Clone)]
pub struct ImageOutput {
    /// What detection found (half blocks when it did not run or failed).
    pub detected: Protocol,
    /// What `P` selected; `None` = the detected one ("auto").
    pub forced: Option<Protocol>,
    pub picker: Option<ratatui_image::picker::Picker>,
    /// The terminal's font size was measured (else protocol images use a 10×20 guess).
    pub measured: bool,
    /// How the protocol was chosen, for the pane title / status line.
    pub note: String,
}

impl std::fmt::Debug for ImageOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageOutput")
            .field("detected", &self.detected)
            .field("forced", &self.forced)
            .field("measured", &self.measured)
            .field("note", &self.note)
            .finish()
    }
}

impl Default for ImageOutput {
    fn default() -> Self {
        ImageOutput::halfblocks("half blocks")
    }
}

impl ImageOutput {
    /// Half blocks only, no terminal query (tests, tmux, explicit choice).
    pub fn halfblocks(note: &str) -> ImageOutput {
        ImageOutput {
            detected: Protocol::Halfblocks,
            forced: None,
            picker: None,
            measured: false,
            note: note.into(),
        }
    }

    /// The protocol in use.
    pub fn active(&self) -> Protocol {
        self.forced.unwrap_or(self.detected)
    }

    /// `P`: auto (the detected protocol) → kitty → sixel → iterm2 → halfblocks → auto.
    pub fn cycle(&mut self) {
        const ORDER: [Protocol; 4] = [
            Protocol::Kitty,
            Protocol::Sixel,
            Protocol::Iterm2,
            Protocol::Halfblocks,
        ];
        self.forced = match self.forced {
            None => Some(ORDER[0]),
            Some(p) => {
                let i = ORDER.iter().position(|q| *q == p).unwrap_or(0);
                ORDER.get(i + 1).copied()
            }
        };
        if self.picker.is_none() && self.active() != Protocol::Halfblocks {
            // never queried: tmux passthrough as detected from the environment, a guessed font
            self.picker = Some(ratatui_image::picker::Picker::halfblocks());
        }
    }

    /// What `P` just selected, for the status line.
    pub fn describe(&self) -> String {
        let mut s = format!("images: {}", self.label());
        if self.active() != Protocol::Halfblocks && !self.measured {
            s += " (the terminal was not queried: sizes assume a 10×20 px font; set SSMLAB_IMAGE_PROTOCOL to query it at start-up)";
        } else if self.forced.is_none() {
            s += &format!(" ({})", self.note);
        }
        s
    }

    /// A label: "kitty", "auto: halfblocks".
    pub fn label(&self) -> String {
        match self.forced {
            None => format!("auto: {}", self.detected.name()),
            Some(p) => p.name().to_string(),
        }
    }

    /// The picker for a graphics protocol (a guessed font size when none was measured).
    pub fn picker_for(&self, p: Protocol) -> ratatui_image::picker::Picker {
        let mut picker = self
            .picker
            .clone()
            .unwrap_or_else(ratatui_image::picker::Picker::halfblocks);
        picker.set_protocol_type(p.to_ratatui());
        picker
    }

    /// Start-up detection. Call once, in the real terminal, after entering the alternate screen
    /// and before reading input. `choice` comes from the environment or the settings file.
    pub fn detect(choice: ProtocolChoice, in_tmux: bool) -> ImageOutput {
        match choice {
            ProtocolChoice::Fixed(Protocol::Halfblocks) => ImageOutput {
                forced: Some(Protocol::Halfblocks),
                ..ImageOutput::halfblocks("half blocks (chosen)")
            },
            ProtocolChoice::Auto if in_tmux => ImageOutput::halfblocks(
                "half blocks inside tmux (SSMLAB_IMAGE_PROTOCOL=kitty|sixel|iterm2 tries graphics through passthrough)",
            ),
            _ => match ratatui_image::picker::Picker::from_query_stdio() {
                Ok(picker) => {
                    let detected = Protocol::from_ratatui(picker.protocol_type());
                    let forced = match choice {
                        ProtocolChoice::Fixed(p) => Some(p),
                        ProtocolChoice::Auto => None,
                    };
                    ImageOutput {
                        detected,
                        forced,
                        picker: Some(picker),
                        measured: true,
                        note: format!("terminal query found {}", detected.name()),
                    }
                }
                Err(e) => ImageOutput {
                    forced: match choice {
                        ProtocolChoice::Fixed(p) => Some(p),
                        ProtocolChoice::Auto => None,
                    },
                    ..ImageOutput::halfblocks(&format!(
                        "the terminal did not answer the graphics query ({e}); half blocks"
                    ))
                },
            },
        }
    }
}

/// Identifies an encoded protocol image: file, pane size, protocol.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EncodeKey {
    pub path: PathBuf,
    pub cols: u16,
    pub rows: u16,
    pub protocol: Protocol,
}

/// Work for the image worker.
pub enum ImageJob {
    /// List a run's sample folders.
    List(PathBuf),
    /// Decode a PNG.
    Decode(PathBuf),
    /// Resize and encode a decoded picture for a graphics protocol.
    Encode {
        key: EncodeKey,
        picture: Arc<Picture>,
        picker: Box<ratatui_image::picker::Picker>,
    },
}

/// Results of the image worker.
pub enum ImageEvent {
    Listed(PathBuf, Vec<SampleSet>),
    Decoded(PathBuf, Result<Arc<Picture>, String>),
    Encoded(
        EncodeKey,
        Result<Box<ratatui_image::protocol::Protocol>, String>,
    ),
}

/// Does one job (on the worker, or inline where there is none).
pub fn handle(job: ImageJob) -> ImageEvent {
    match job {
        ImageJob::List(run) => {
            // A listing that panicked lists nothing; the status line names the panic.
            let sets = super::worker::guard("image", || Ok(list_sample_sets(&run)));
            ImageEvent::Listed(run, sets.unwrap_or_default())
        }
        ImageJob::Decode(path) => {
            let r = super::worker::guard("image", || decode_file(&path)).map(Arc::new);
            ImageEvent::Decoded(path, r)
        }
        ImageJob::Encode {
            key,
            picture,
            picker,
        } => {
            let size = ratatui::layout::Size::new(key.cols, key.rows);
            let r = super::worker::guard("image", || {
                picker
                    .new_protocol(
                        picture.to_dynamic(),
                        size,
                        ratatui_image::Resize::Scale(Some(ratatui_image::FilterType::Nearest)),
                    )
                    .map(Box::new)
                    .map_err(|e| {
                        format!(
                            "cannot encode {} for {}: {e}",
                            key.path.display(),
                            key.protocol.name()
                        )
                    })
            });
            ImageEvent::Encoded(key, r)
        }
    }
}
