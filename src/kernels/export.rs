//! Kernels out of the terminal: a [`Figure`] as a PNG (the `image` crate, with a small built-in
//! bitmap font for labels) and a checkpoint's kernels as CSV.

use std::io::Write;
use std::path::Path;

use image::{Rgb, RgbImage};

use super::figure::{Figure, Panel, Series, Tone, heat_bins, series_bounds, tick_label};
use super::{Direction, ModelKernels};

const WHITE: Rgb<u8> = Rgb([255, 255, 255]);
const INK: Rgb<u8> = Rgb([30, 30, 30]);
const GRID: Rgb<u8> = Rgb([200, 200, 200]);
const FAINT: Rgb<u8> = Rgb([170, 170, 170]);
const FWD: Rgb<u8> = Rgb([31, 119, 180]);
const BWD: Rgb<u8> = Rgb([214, 39, 40]);

fn tone_color(t: Tone) -> Rgb<u8> {
    match t {
        Tone::Forward => FWD,
        Tone::Backward => BWD,
        Tone::Faint => FAINT,
    }
}

/// 3×5 glyphs, one row per entry, bit 2 = left column. Every printable ASCII character has
/// its own (lower case drawn as upper case); anything else is a full block.
pub fn glyph(c: char) -> [u8; 5] {
    match c.to_ascii_uppercase() {
        '0' => [7, 5, 5, 5, 7],
        '1' => [2, 6, 2, 2, 7],
        '2' => [7, 1, 7, 4, 7],
        '3' => [7, 1, 7, 1, 7],
        '4' => [5, 5, 7, 1, 1],
        '5' => [7, 4, 7, 1, 7],
        '6' => [7, 4, 7, 5, 7],
        '7' => [7, 1, 1, 1, 1],
        '8' => [7, 5, 7, 5, 7],
        '9' => [7, 5, 7, 1, 7],
        'A' => [2, 5, 7, 5, 5],
        'B' => [6, 5, 6, 5, 6],
        'C' => [3, 4, 4, 4, 3],
        'D' => [6, 5, 5, 5, 6],
        'E' => [7, 4, 6, 4, 7],
        'F' => [7, 4, 6, 4, 4],
        'G' => [3, 4, 5, 5, 3],
        'H' => [5, 5, 7, 5, 5],
        'I' => [7, 2, 2, 2, 7],
        'J' => [1, 1, 1, 5, 2],
        'K' => [5, 5, 6, 5, 5],
        'L' => [4, 4, 4, 4, 7],
        'M' => [5, 7, 7, 5, 5],
        'N' => [6, 5, 5, 5, 5],
        'O' => [2, 5, 5, 5, 2],
        'P' => [6, 5, 6, 4, 4],
        'Q' => [2, 5, 5, 6, 3],
        'R' => [6, 5, 6, 5, 5],
        'S' => [3, 4, 2, 1, 6],
        'T' => [7, 2, 2, 2, 2],
        'U' => [5, 5, 5, 5, 7],
        'V' => [5, 5, 5, 5, 2],
        'W' => [5, 5, 7, 7, 5],
        'X' => [5, 5, 2, 5, 5],
        'Y' => [5, 5, 2, 2, 2],
        'Z' => [7, 1, 2, 4, 7],
        '.' | '·' => [0, 0, 0, 0, 2],
        '-' | '−' | '–' => [0, 0, 7, 0, 0],
        '+' => [0, 2, 7, 2, 0],
        ':' => [0, 2, 0, 2, 0],
        '/' => [1, 1, 2, 4, 4],
        '(' => [2, 4, 4, 4, 2],
        ')' => [2, 1, 1, 1, 2],
        '=' => [0, 7, 0, 7, 0],
        ',' => [0, 0, 0, 2, 4],
        '%' => [5, 1, 2, 4, 5],
        '_' => [0, 0, 0, 0, 7],
        '[' => [6, 4, 4, 4, 6],
        ']' => [3, 1, 1, 1, 3],
        '|' => [2, 2, 2, 2, 2],
        '<' => [1, 2, 4, 2, 1],
        '>' => [4, 2, 1, 2, 4],
        '×' | '*' => [0, 5, 2, 5, 0],
        '⊙' => [2, 5, 7, 5, 2],
        'Δ' => [2, 2, 5, 5, 7],
        '…' => [0, 0, 0, 0, 5],
        '\'' | '’' => [2, 2, 0, 0, 0],
        ';' => [0, 2, 0, 2, 4],
        '≥' => [4, 2, 1, 2, 7],
        '²' => [6, 2, 4, 6, 0],
        '!' => [2, 2, 2, 0, 2],
        '"' => [5, 5, 0, 0, 0],
        '#' => [5, 7, 5, 7, 5],
        '$' => [3, 6, 2, 3, 6],
        '&' => [2, 5, 2, 5, 3],
        '?' => [7, 1, 2, 0, 2],
        '@' => [7, 5, 7, 4, 3],
        '\\' => [4, 4, 2, 1, 1],
        '^' => [2, 5, 0, 0, 0],
        '`' => [4, 2, 0, 0, 0],
        '{' => [3, 2, 6, 2, 3],
        '}' => [6, 2, 3, 2, 6],
        '~' => [0, 3, 6, 0, 0],
        ' ' => [0; 5],
        _ => [7; 5],
    }
}

/// Text scale: glyph pixels are SCALE×SCALE.
const SCALE: u32 = 2;
const CHAR_W: u32 = 4 * SCALE;
const CHAR_H: u32 = 6 * SCALE;

fn put(img: &mut RgbImage, x: i64, y: i64, c: Rgb<u8>) {
    if x >= 0 && y >= 0 && (x as u32) < img.width() && (y as u32) < img.height() {
        img.put_pixel(x as u32, y as u32, c);
    }
}

fn text(img: &mut RgbImage, x: i64, y: i64, s: &str, c: Rgb<u8>) {
    for (i, ch) in s.chars().enumerate() {
        let g = glyph(ch);
        let x0 = x + (i as u32 * CHAR_W) as i64;
        for (row, bits) in g.iter().enumerate() {
            for col in 0..3 {
                if bits & (4 >> col) != 0 {
                    for dy in 0..SCALE {
                        for dx in 0..SCALE {
                            put(
                                img,
                                x0 + (col * SCALE + dx) as i64,
                                y + (row as u32 * SCALE + dy) as i64,
                                c,
                            );
                        }
                    }
                }
            }
        }
    }
}

fn line(img: &mut RgbImage, (x0, y0): (i64, i64), (x1, y1): (i64, i64), c: Rgb<u8>) {
    let (dx, dy) = ((x1 - x0).abs(), -(y1 - y0).abs());
    let (sx, sy) = (if x0 < x1 { 1 } else { -1 }, if y0 < y1 { 1 } else { -1 });
    let (mut x, mut y, mut err) = (x0, y0, dx + dy);
    loop {
        put(img, x, y, c);
        if x == x1 && y == y1 {
            break;
        }
        let e2 = 2 * err;
        if e2 >= dy {
            err += dy;
            x += sx;
        }
        if e2 <= dx {
            err += dx;
            y += sy;
        }
    }
}

fn rect(img: &mut RgbImage, x: i64, y: i64, w: i64, h: i64, c: Rgb<u8>) {
    for yy in y..y + h {
        for xx in x..x + w {
            put(img, xx, yy, c);
        }
    }
}

/// Diverging colour of a value in [−1, 1]: blue (negative) – white – red (positive).
pub fn diverging(v: f64) -> Rgb<u8> {
    let v = v.clamp(-1.0, 1.0);
    let (r, g, b) = if v >= 0.0 {
        (1.0, 1.0 - v, 1.0 - v)
    } else {
        (1.0 + v, 1.0 + v, 1.0)
    };
    Rgb([(r * 255.0) as u8, (g * 255.0) as u8, (b * 255.0) as u8])
}

struct Area {
    x: i64,
    y: i64,
    w: i64,
    h: i64,
}

fn draw_plot(img: &mut RgbImage, a: &Area, p: &Panel) {
    let Panel::Plot {
        title,
        x_label,
        y_label,
        series,
        log_x,
        log_y,
    } = p
    else {
        return;
    };
    text(img, a.x + 4, a.y + 2, title, INK);
    let (l, t, r, b) = (a.x + 70, a.y + 22, a.x + a.w - 10, a.y + a.h - 34);
    if r <= l || b <= t {
        return;
    }
    let Some((xb, yb)) = series_bounds(series) else {
        text(img, l, t + 10, "no data", INK);
        return;
    };
    let px = |x: f64| l + ((x - xb[0]) / (xb[1] - xb[0]) * (r - l) as f64).round() as i64;
    let py = |y: f64| b - ((y - yb[0]) / (yb[1] - yb[0]) * (b - t) as f64).round() as i64;
    if yb[0] < 0.0 && yb[1] > 0.0 {
        line(img, (l, py(0.0)), (r, py(0.0)), GRID);
    }
    if xb[0] < 0.0 && xb[1] > 0.0 && !log_x {
        line(img, (px(0.0), t), (px(0.0), b), GRID);
    }
    line(img, (l, t), (l, b), INK);
    line(img, (l, b), (r, b), INK);
    for i in 0..=4 {
        let fx = xb[0] + (xb[1] - xb[0]) * i as f64 / 4.0;
        let fy = yb[0] + (yb[1] - yb[0]) * i as f64 / 4.0;
        let x = px(fx);
        line(img, (x, b), (x, b + 4), INK);
        let s = tick_label(fx, *log_x);
        text(
            img,
            x - (s.len() as i64 * CHAR_W as i64) / 2,
            b + 7,
            &s,
            INK,
        );
        let y = py(fy);
        line(img, (l - 4, y), (l, y), INK);
        let s = tick_label(fy, *log_y);
        text(img, l - 8 - s.len() as i64 * CHAR_W as i64, y - 5, &s, INK);
    }
    text(img, l, b + 21, x_label, INK);
    text(img, a.x + 4, t - 10, y_label, FAINT);
    // faint series first, so the current ones lie on top
    let mut order: Vec<&Series> = series.iter().filter(|s| s.tone == Tone::Faint).collect();
    order.extend(series.iter().filter(|s| s.tone != Tone::Faint));
    for s in order {
        let c = tone_color(s.tone);
        let pts: Vec<(i64, i64)> = s
            .points
            .iter()
            .filter(|p| p.0.is_finite() && p.1.is_finite())
            .map(|(x, y)| (px(*x), py(*y)))
            .collect();
        if s.scatter {
            for (x, y) in pts {
                rect(img, x - 2, y - 2, 5, 5, c);
            }
        } else {
            for w in pts.windows(2) {
                line(img, w[0], w[1], c);
            }
        }
    }
    // legend
    let mut ly = t + 2;
    for s in series.iter().filter(|s| !s.label.is_empty()) {
        let w = s.label.chars().count() as i64 * CHAR_W as i64;
        rect(img, r - w - 22, ly + 2, 12, 8, tone_color(s.tone));
        text(img, r - w - 6, ly, &s.label, INK);
        ly += CHAR_H as i64 + 4;
    }
}

fn draw_heatmap(img: &mut RgbImage, a: &Area, p: &Panel) {
    let Panel::Heatmap {
        title,
        x_label,
        rows,
        log_x,
        highlight,
    } = p
    else {
        return;
    };
    text(img, a.x + 4, a.y + 2, title, INK);
    let (l, t, r, b) = (a.x + 100, a.y + 22, a.x + a.w - 10, a.y + a.h - 34);
    if r <= l || b <= t || rows.is_empty() {
        return;
    }
    let cols = (r - l) as usize;
    let (bins, xb) = heat_bins(rows, cols);
    let rh = ((b - t) / rows.len() as i64).max(1);
    for (i, (row, bin)) in rows.iter().zip(&bins).enumerate() {
        let y = t + i as i64 * rh;
        for (j, v) in bin.iter().enumerate() {
            if let Some(v) = v {
                rect(img, l + j as i64, y, 1, rh, diverging(*v));
            }
        }
        let c = if *highlight == Some(i) { FWD } else { INK };
        text(img, a.x + 4, y + rh / 2 - 5, &row.label, c);
        if *highlight == Some(i) {
            line(img, (l - 6, y), (l - 6, y + rh - 1), FWD);
        }
    }
    let bottom = t + rows.len() as i64 * rh;
    line(img, (l, bottom), (r, bottom), INK);
    for i in 0..=4 {
        let fx = xb[0] + (xb[1] - xb[0]) * i as f64 / 4.0;
        let x = l + ((r - l) as f64 * i as f64 / 4.0) as i64;
        line(img, (x, bottom), (x, bottom + 4), INK);
        let s = tick_label(fx, *log_x);
        text(
            img,
            x - (s.len() as i64 * CHAR_W as i64) / 2,
            bottom + 7,
            &s,
            INK,
        );
    }
    text(img, l, bottom + 21, x_label, INK);
}

/// A map on a grid: square cells in the diverging colours, the marked cell outlined, the
/// legend to the right.
fn draw_field(img: &mut RgbImage, a: &Area, p: &Panel) {
    let Panel::Field {
        title,
        rows,
        cols,
        values,
        mark,
        legend,
    } = p
    else {
        return;
    };
    text(img, a.x + 4, a.y + 2, title, INK);
    let (rows, cols) = (*rows as i64, *cols as i64);
    if rows == 0 || cols == 0 {
        return;
    }
    let legend_w = legend
        .iter()
        .map(|l| l.chars().count() as i64)
        .max()
        .unwrap_or(0)
        * CHAR_W as i64
        + 20;
    let (l, t) = (a.x + 30, a.y + 26);
    let avail_w = (a.w - 40 - legend_w).max(cols);
    let avail_h = (a.h - 40).max(rows);
    let cell = (avail_w / cols).min(avail_h / rows).max(1);
    for r in 0..rows {
        for c in 0..cols {
            let v = values.get((r * cols + c) as usize).copied().unwrap_or(0.0);
            rect(img, l + c * cell, t + r * cell, cell, cell, diverging(v));
        }
        if r % 2 == 0 || cell >= 14 {
            let s = r.to_string();
            text(
                img,
                l - 4 - s.len() as i64 * CHAR_W as i64,
                t + r * cell + (cell - 10) / 2,
                &s,
                FAINT,
            );
        }
    }
    // the frame and the marked cell
    let (w, h) = (cols * cell, rows * cell);
    line(img, (l - 1, t - 1), (l + w, t - 1), GRID);
    line(img, (l - 1, t + h), (l + w, t + h), GRID);
    line(img, (l - 1, t - 1), (l - 1, t + h), GRID);
    line(img, (l + w, t - 1), (l + w, t + h), GRID);
    let (mx, my) = (l + mark.1 as i64 * cell, t + mark.0 as i64 * cell);
    for k in 0..2 {
        let (x0, y0, x1, y1) = (mx - 1 - k, my - 1 - k, mx + cell + k, my + cell + k);
        line(img, (x0, y0), (x1, y0), INK);
        line(img, (x0, y1), (x1, y1), INK);
        line(img, (x0, y0), (x0, y1), INK);
        line(img, (x1, y0), (x1, y1), INK);
    }
    for (i, s) in legend.iter().enumerate() {
        text(img, l + w + 20, t + i as i64 * (CHAR_H as i64 + 6), s, INK);
    }
}

fn draw_text(img: &mut RgbImage, a: &Area, p: &Panel) {
    let Panel::Text { title, lines } = p else {
        return;
    };
    text(img, a.x + 4, a.y + 2, title, INK);
    for (i, l) in lines.iter().enumerate() {
        text(
            img,
            a.x + 4,
            a.y + 22 + i as i64 * (CHAR_H as i64 + 4),
            l,
            INK,
        );
    }
}

/// Renders a figure: title and notes on top, panels in a grid of two columns (one panel alone
/// takes the full width; text panels take a short full-width row).
pub fn render_png(fig: &Figure) -> RgbImage {
    let width: u32 = 1400;
    let plots: Vec<&Panel> = fig
        .panels
        .iter()
        .filter(|p| !matches!(p, Panel::Text { .. }))
        .collect();
    let texts: Vec<&Panel> = fig
        .panels
        .iter()
        .filter(|p| matches!(p, Panel::Text { .. }))
        .collect();
    let cols = if plots.len() > 1 { 2 } else { 1 };
    let cell_h: u32 = 420;
    let head = 20 + 16 * fig.notes.len() as u32 + 10;
    let plot_rows = plots.len().div_ceil(cols) as u32;
    let text_h: u32 = texts
        .iter()
        .map(|p| match p {
            Panel::Text { lines, .. } => 30 + lines.len() as u32 * (CHAR_H + 4),
            _ => 0,
        })
        .sum();
    let height = head + plot_rows * cell_h + text_h + 10;
    let mut img = RgbImage::from_pixel(width, height, WHITE);
    text(&mut img, 10, 6, &fig.title, INK);
    for (i, n) in fig.notes.iter().enumerate() {
        text(&mut img, 10, 24 + 16 * i as i64, n, FAINT);
    }
    let cw = width as i64 / cols as i64;
    for (i, p) in plots.iter().enumerate() {
        let a = Area {
            x: (i % cols) as i64 * cw,
            y: head as i64 + (i / cols) as i64 * cell_h as i64,
            w: cw,
            h: cell_h as i64,
        };
        match p {
            Panel::Plot { .. } => draw_plot(&mut img, &a, p),
            Panel::Field { .. } => draw_field(&mut img, &a, p),
            _ => draw_heatmap(&mut img, &a, p),
        }
    }
    let mut y = head as i64 + (plot_rows * cell_h) as i64;
    for p in texts {
        let h = match p {
            Panel::Text { lines, .. } => 30 + lines.len() as i64 * (CHAR_H as i64 + 4),
            _ => 0,
        };
        draw_text(
            &mut img,
            &Area {
                x: 0,
                y,
                w: width as i64,
                h,
            },
            p,
        );
        y += h;
    }
    img
}

/// Writes a figure as a PNG.
pub fn write_png(fig: &Figure, path: &Path) -> anyhow::Result<()> {
    render_png(fig)
        .save_with_format(path, image::ImageFormat::Png)
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))
}

/// Writes a checkpoint's kernels as CSV: `step,layer,direction,channel,lag,k` (all layers, or
/// one).
pub fn write_csv(mk: &ModelKernels, layer: Option<usize>, path: &Path) -> anyhow::Result<()> {
    let err = |e: std::io::Error| anyhow::anyhow!("cannot write {}: {e}", path.display());
    let mut w = std::io::BufWriter::new(std::fs::File::create(path).map_err(err)?);
    writeln!(w, "step,layer,direction,channel,lag,k").map_err(err)?;
    let step = mk.step.map(|s| s.to_string()).unwrap_or_default();
    for (i, l) in mk.layers.iter().enumerate() {
        if layer.is_some_and(|x| x != i) {
            continue;
        }
        for d in [Direction::Forward, Direction::Backward] {
            for (c, k) in l.get(d).kernels.iter().enumerate() {
                for (lag, v) in k.iter().enumerate() {
                    writeln!(w, "{step},{i},{},{c},{lag},{v:e}", d.short()).map_err(err)?;
                }
            }
        }
    }
    w.flush().map_err(err)
}
