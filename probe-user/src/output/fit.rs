//! Tables that fit the terminal: the columns' natural widths are shrunk,
//! widest first, until the table fits, and the cells are wrapped at word
//! boundaries (a word longer than its column is cut).

use prettytable::{format, Cell, Row, Table};

/// The width when stdout is not a terminal and COLUMNS is not set.
pub const DEFAULT_WIDTH: usize = 100;
/// No column is narrowed below this (or its natural width, if smaller);
/// a title wider than its column wraps too.
const MIN_COLUMN: usize = 8;

/// COLUMNS if set, else the terminal's width (TIOCGWINSZ on stdout), else
/// [`DEFAULT_WIDTH`].
pub fn terminal_width() -> usize {
    if let Some(w) = std::env::var("COLUMNS").ok().and_then(|c| c.trim().parse::<usize>().ok()).filter(|&w| w > 0) {
        return w;
    }
    let mut ws = libc::winsize { ws_row: 0, ws_col: 0, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCGWINSZ fills a winsize; it fails harmlessly on a non-terminal.
    let r = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut ws) };
    if r == 0 && ws.ws_col > 0 {
        ws.ws_col as usize
    } else {
        DEFAULT_WIDTH
    }
}

fn text_width(cell: &str) -> usize {
    cell.lines().map(|l| l.chars().count()).max().unwrap_or(0)
}

/// The column widths that fit `total` characters of table (borders, padding
/// and separators of prettytable's FORMAT_NO_LINESEP_WITH_TITLE included).
fn widths(natural: &[usize], total: usize) -> Vec<usize> {
    let n = natural.len();
    let budget = total.saturating_sub(3 * n + 1);
    if natural.iter().sum::<usize>() <= budget {
        return natural.to_vec();
    }
    // Water-filling: the narrow columns keep their width, the wide ones
    // share what is left equally.
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|&i| natural[i]);
    let mut w = vec![0; n];
    let mut left = budget;
    for (k, &i) in order.iter().enumerate() {
        let share = left / (n - k);
        let floor = natural[i].min(MIN_COLUMN);
        w[i] = natural[i].min(share).max(floor);
        left = left.saturating_sub(w[i]);
    }
    w
}

/// Greedy word wrap of every line of `cell` at `width` characters.
pub fn wrap(cell: &str, width: usize) -> String {
    let width = width.max(1);
    let mut out: Vec<String> = Vec::new();
    for line in cell.split('\n') {
        let mut cur = String::new();
        for word in line.split(' ') {
            let mut word: Vec<char> = word.chars().collect();
            let cur_len = cur.chars().count();
            if cur_len > 0 && cur_len + 1 + word.len() <= width {
                cur.push(' ');
                cur.extend(&word);
                continue;
            }
            if cur_len > 0 {
                out.push(std::mem::take(&mut cur));
            }
            while word.len() > width {
                out.push(word.drain(..width).collect());
            }
            cur = word.into_iter().collect();
        }
        out.push(cur);
    }
    out.join("\n")
}

/// A table of `titles` and `rows` no wider than `total` characters
/// (except when even the narrowest columns do not fit).
pub fn table(titles: &[&str], rows: &[Vec<String>], total: usize) -> Table {
    let n = titles.len();
    let natural: Vec<usize> =
        (0..n).map(|i| rows.iter().map(|r| text_width(&r[i])).chain([titles[i].len()]).max().unwrap_or(0)).collect();
    let w = widths(&natural, total);
    let mut t = Table::new();
    t.set_format(*format::consts::FORMAT_NO_LINESEP_WITH_TITLE);
    t.set_titles(Row::new(titles.iter().zip(&w).map(|(s, &w)| Cell::new(&wrap(s, w))).collect()));
    for r in rows {
        t.add_row(Row::new(r.iter().zip(&w).map(|(c, &w)| Cell::new(&wrap(c, w))).collect()));
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    fn max_line(s: &str) -> usize {
        s.lines().map(|l| l.chars().count()).max().unwrap_or(0)
    }

    #[test]
    fn wraps_words_and_cuts_long_ones() {
        assert_eq!(wrap("kprobe: not supported by this kernel", 12), "kprobe: not\nsupported by\nthis kernel");
        assert_eq!(wrap("abcdefghij", 4), "abcd\nefgh\nij");
        assert_eq!(wrap("a\nb c", 10), "a\nb c");
    }

    #[test]
    fn fits_the_width() {
        let long = "fentry: Operation not permitted (os error 1) while loading the program into the kernel".to_owned();
        let rows = vec![
            vec![
                "reclaim".to_owned(),
                "tracepoint".to_owned(),
                "vmscan/mm_vmscan_direct_reclaim_begin".to_owned(),
                long.clone(),
            ],
            vec![
                "alloc_slowpath".to_owned(),
                "missing".to_owned(),
                "__alloc_pages_slowpath.constprop.0".to_owned(),
                long,
            ],
        ];
        let titles = ["HOOK", "CHOSEN", "TARGET", "SKIPPED (kernel's reason)"];
        for width in [60, 80, 100, 239] {
            let text = table(&titles, &rows, width).to_string();
            assert!(max_line(&text) <= width, "{width}:\n{text}");
            assert!(text.contains("reclaim") && text.contains("tracepoint"), "{text}");
        }
        // Room enough: nothing is wrapped.
        let wide = table(&titles, &rows, 400).to_string();
        assert_eq!(wide.lines().count(), 2 + 2 + 2, "{wide}");
    }
}
