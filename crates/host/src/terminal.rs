//! A shell's screen model: the terminal state that a client joining a running
//! shell is drawn, instead of a replay of everything the shell has printed.
//!
//! [`TerminalModel`] parses the PTY output with [`vt100`];
//! [`TerminalModel::snapshot`] writes the bytes that, fed to a fresh
//! xterm-compatible terminal of the same size, reproduce:
//! * the last lines of scrollback, into the fresh terminal's scrollback,
//!   with colours and attributes, lines that wrapped still joined (but for
//!   the last one above the screen), rows that a narrowing resize left
//!   wider than the screen wrapped as xterm.js shows them. vt100 exports
//!   scrollback in a simpler format than the screen: there, an empty cell
//!   that the cursor skipped over takes the colours of the cell before it;
//! * the visible screen: every cell's text, colours and attributes (bold,
//!   dim, italic, underline, inverse), wide characters, rows that wrap, the
//!   cursor position and visibility, and the current drawing attributes;
//! * with a full-screen program running, the main screen and its scrollback
//!   first, then the alternate screen over it (`\x1b[?1049h`), so that the
//!   shell comes back when the program exits;
//! * the input modes: application cursor keys and keypad, bracketed paste,
//!   mouse reporting and its encoding, and the cursor style;
//! * an escape sequence or UTF-8 character that the output so far ends in
//!   the middle of, so that the live bytes after the snapshot finish it.
//!
//! vt100 parses about 50 MB/s here, less than a busy shell prints. Plain
//! text (printable characters, CR, LF, tab, backspace and SGR colour
//! sequences) that only scrolls away is therefore held back and most of it
//! never parsed: once a run of it holds more line feeds after a CR than
//! the screen and the scrollback can show (twice the rows, as the cursor may
//! first walk down existing rows), everything before that CR can only have
//! left rows that are scrolled out of the model, a cursor column that the
//! CR resets, and drawing attributes, which are kept by parsing its SGR
//! sequences alone. Held text is parsed before anything else is (another
//! control or escape sequence, a resize, a snapshot). Not while a scroll
//! region may be set: a cursor outside it overwrites rows that stay.
//!
//! What it cannot reproduce, because vt100 does not keep or expose it: the
//! scroll region and origin mode, a cursor saved with `ESC 7`, tab stops,
//! character sets (DEC line drawing reaches the joiner as ASCII letters), the
//! character that `REP` repeats, the window title and other OSC state, and
//! attributes beyond the five above (blink, strikethrough, underline styles
//! and colours, hyperlinks, images). The attributes saved on entering the
//! alternate screen are taken to be the defaults (they return when the
//! program exits it). The alternate screen has no scrollback, here as in
//! xterm.

use std::fmt::Write as _;
use std::num::NonZeroU16;

/// The longest unfinished sequence kept for a late joiner. Escape sequences
/// and titles fit; of a longer string (an image, a clipboard copy) the
/// joiner gets the beginning, which leaves its parser in the same state.
const PENDING_MAX: usize = 4 << 10; // 4 KiB

const BEL: u8 = 0x07;
const CAN: u8 = 0x18;
const SUB: u8 = 0x1a;
const ESC: u8 = 0x1b;
/// 8-bit String Terminator, which vte accepts only to end a DCS.
const ST: u8 = 0x9c;

/// Held text is cut only once this much of it can go: each cut moves the
/// rest of it.
const DROP_AT: usize = 256 << 10; // 256 KiB

/// Held text that cannot be cut (no CR, or lines too long to count) is
/// parsed once it reaches this size.
const HOLD_MAX: usize = 8 << 20; // 8 MiB

/// One shell's terminal state, fed its PTY output.
pub struct TerminalModel {
    parser: vt100::Parser,
    pending: Pending,
    held: Held,
    /// Whether the main and the alternate screen may have a scroll region.
    regions: [bool; 2],
    /// Scrollback lines the parser keeps.
    scrollback: usize,
    /// Reused for the marks of each `feed`.
    marks: Vec<Mark>,
}

/// Plain text not given to the parser yet (see the module docs).
#[derive(Default)]
struct Held {
    /// Whether output is being held; it then starts at a CR.
    on: bool,
    bytes: Vec<u8>,
    /// Line feeds in `bytes`.
    lfs: usize,
    /// CRs in `bytes` where it may be cut: their offset and the line feeds
    /// before them.
    cuts: std::collections::VecDeque<(usize, usize)>,
}

impl TerminalModel {
    /// `rows`/`cols` of the PTY (0 counts as 1, vt100's minimum);
    /// `scrollback` = lines kept above the screen.
    pub fn new(rows: u16, cols: u16, scrollback: usize) -> TerminalModel {
        TerminalModel {
            parser: vt100::Parser::new(at_least_one(rows), at_least_one(cols), scrollback),
            pending: Pending::default(),
            held: Held::default(),
            regions: [false; 2],
            scrollback,
            marks: Vec::new(),
        }
    }

    /// Raw PTY output; it may split UTF-8 characters and escape sequences
    /// anywhere.
    pub fn feed(&mut self, bytes: &[u8]) {
        let mut marks = std::mem::take(&mut self.marks);
        marks.clear();
        self.pending.feed(bytes, &mut marks);
        // bytes[..done] are parsed or held.
        let mut done = 0;
        for &mark in &marks {
            match mark {
                Mark::Cr(at) if self.held.on => {
                    self.hold(&bytes[done..at]);
                    done = at;
                    self.held
                        .cuts
                        .push_back((self.held.bytes.len(), self.held.lfs));
                }
                Mark::Cr(at) => {
                    self.parser.process(&bytes[done..at]);
                    done = at;
                    let screen = usize::from(self.parser.screen().alternate_screen());
                    self.held.on = !self.regions[screen];
                    if self.held.on {
                        self.held.cuts.push_back((0, 0));
                    }
                }
                Mark::Break => self.flush(),
                Mark::Region { end, params } => {
                    self.flush();
                    self.parser.process(&bytes[done..end]);
                    done = end;
                    let (rows, _) = self.size();
                    let screen = usize::from(self.parser.screen().alternate_screen());
                    self.regions[screen] =
                        !params.is_some_and(|(top, bottom)| is_full_region(top, bottom, rows));
                }
            }
        }
        if self.held.on {
            self.hold(&bytes[done..]);
            self.drop_scrolled_out();
        } else {
            self.parser.process(&bytes[done..]);
        }
        self.marks = marks;
    }

    /// Parses the held text: the model shows all it was fed. Feeding does
    /// this whenever it must; call it when the output pauses, so that a
    /// snapshot does not have to.
    pub fn settle(&mut self) {
        self.flush();
    }

    /// Rows pushed off the top go to the scrollback; growing pulls them back
    /// (vt100 does not reflow wrapped lines).
    pub fn resize(&mut self, rows: u16, cols: u16) {
        self.flush();
        if self.size() != (at_least_one(rows).get(), at_least_one(cols).get()) {
            // vt100, like xterm, resets the scroll regions.
            self.regions = [false; 2];
        }
        self.parser.set_size(at_least_one(rows), at_least_one(cols));
    }

    /// (rows, cols).
    pub fn size(&self) -> (u16, u16) {
        let (rows, cols) = self.parser.screen().size();
        (rows.get(), cols.get())
    }

    /// Bytes that, written to a fresh xterm-compatible terminal of
    /// [`size`](Self::size), reproduce this one: up to `max_scrollback_lines`
    /// rows of scrollback (as that terminal wraps them), then the screens,
    /// cursor and input modes (see the module docs for what is and is not
    /// carried).
    pub fn snapshot(&mut self, max_scrollback_lines: usize) -> Vec<u8> {
        self.flush();
        let screen = self.parser.screen_mut();
        let (rows, cols) = screen.size();
        // Sized for the screens, each row about its width in text plus
        // escapes; the scrollback reserves its own.
        let screens = if screen.alternate_screen() { 2 } else { 1 };
        let mut out = String::with_capacity(
            screens * usize::from(rows.get()) * (usize::from(cols.get()) + 16),
        );

        if screen.alternate_screen() {
            // vt100 reads and scrolls only the active screen, and switching
            // takes an escape sequence. Ours may be stopped mid-sequence by
            // `feed`, so the screen is lent to a parser of its own for that;
            // mode 47 switches without clearing or moving anything.
            let mut lent = vt100::Parser::new(NonZeroU16::MIN, NonZeroU16::MIN, 0);
            std::mem::swap(lent.screen_mut(), screen);
            lent.process(b"\x1b[?47l");
            write_main(&mut out, lent.screen(), max_scrollback_lines);
            // 1049 saves the cursor now on the main screen and restores it
            // when the program exits, as the shell's terminal did.
            out.push_str("\x1b[m\x1b[?1049h");
            lent.process(b"\x1b[?47h");
            out.push_str(&lent.screen().contents_formatted());
            std::mem::swap(lent.screen_mut(), screen);
        } else {
            write_main(&mut out, screen, max_scrollback_lines);
        }
        out.push_str(&screen.input_mode_formatted());

        let mut out = out.into_bytes();
        out.extend_from_slice(&self.pending.bytes);
        out
    }

    fn hold(&mut self, bytes: &[u8]) {
        self.held.lfs += bytes.iter().filter(|&&b| b == b'\n').count();
        self.held.bytes.extend_from_slice(bytes);
    }

    /// Parses the held text and stops holding.
    fn flush(&mut self) {
        self.parser.process(&self.held.bytes);
        self.held.bytes.clear();
        self.held.cuts.clear();
        self.held.lfs = 0;
        self.held.on = false;
    }

    /// Cuts the held text at the last CR with enough line feeds after it to
    /// scroll everything before it out of the screen and the scrollback;
    /// of what is cut, only the SGR sequences are parsed.
    fn drop_scrolled_out(&mut self) {
        let (rows, _) = self.size();
        let keep = 2 * usize::from(rows) + self.scrollback + 2;
        let held = &mut self.held;
        while held.cuts.len() > 1 && held.lfs - held.cuts[1].1 >= keep {
            held.cuts.pop_front();
        }
        match held.cuts.front() {
            Some(&(at, lfs_before)) if at >= DROP_AT && held.lfs - lfs_before >= keep => {
                let sgr = sgr_sequences(&held.bytes[..at]);
                self.parser.process(&sgr);
                let held = &mut self.held;
                held.bytes.drain(..at);
                held.lfs -= lfs_before;
                for cut in &mut held.cuts {
                    cut.0 -= at;
                    cut.1 -= lfs_before;
                }
            }
            _ if held.bytes.len() >= HOLD_MAX => self.flush(),
            _ => {}
        }
    }
}

/// The SGR sequences in held text, in order: the only escapes it has, each
/// complete before a cut.
fn sgr_sequences(mut text: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(at) = text.iter().position(|&b| b == ESC) {
        let len = text[at..]
            .iter()
            .position(|&b| b == b'm')
            .map_or(text.len() - at, |m| m + 1);
        out.extend_from_slice(&text[at..at + len]);
        text = &text[at + len..];
    }
    out
}

/// Whether `CSI top ; bottom r` (0 for a parameter left out) leaves the
/// whole screen scrolling, as vt100 reads it.
fn is_full_region(top: u16, bottom: u16, rows: u16) -> bool {
    let top = top.max(1) - 1;
    let bottom = if bottom == 0 { rows } else { bottom }.min(rows) - 1;
    top >= bottom || (top == 0 && bottom == rows - 1)
}

fn at_least_one(n: u16) -> NonZeroU16 {
    NonZeroU16::new(n).unwrap_or(NonZeroU16::MIN)
}

/// Writes up to `max_lines` of the main screen's scrollback, into the
/// joiner's scrollback, then the screen itself. `screen` must show the main
/// screen.
fn write_main(out: &mut String, screen: &vt100::Screen, max_lines: usize) {
    if max_lines > 0 && screen.scrollback_len() > 0 {
        write_scrollback(out, screen, max_lines);
    }
    out.push_str(&screen.contents_formatted());
}

fn write_scrollback(out: &mut String, screen: &vt100::Screen, max_lines: usize) {
    let (rows, cols) = screen.size();
    let (rows, cols) = (usize::from(rows.get()), cols.get());
    // vt100 reads scrollback without scrolling its view (which would widen
    // every row it shows, for good) only all at once, screen included, in
    // its "basic" format: text, SGR, and '\n' after rows that do not wrap.
    let mut capture =
        String::with_capacity((screen.scrollback_len() + rows) * (usize::from(cols) + 8));
    let mut state = vt100::capture::BasicFormattedCaptureState::new();
    let range = vt100::capture::BasicFormattedCaptureRange::Full(&mut state);
    // Writing to a String cannot fail.
    let _ = screen.write_contents_formatted_basic(&mut capture, range);
    // Split as the joiner's terminal will wrap them (rows left wider by a
    // resize become several); the last `rows` are the screen.
    let all: Vec<&str> = vt100::capture::basic_formatted_rows(&capture, cols).collect();
    let above = all.len().saturating_sub(rows);
    let lines = above.min(max_lines);
    if lines == 0 {
        return;
    }
    let offset = |row: &str| row.as_ptr().addr() - capture.as_ptr().addr();
    let start = offset(all[above - lines]);
    let end = offset(all[above - 1]) + all[above - 1].len();

    // Each '\n' becomes CRLF, then a line feed per row on screen.
    out.reserve(end - start + 2 * lines + rows + 16);
    // SGR in the capture only changes what differs, so the rows kept start
    // with the escapes since the last reset before them.
    let before = &capture[..start];
    push_escapes(out, &before[before.rfind("\x1b[m").unwrap_or(0)..]);
    // The rows as the shell printed them: the joiner's screen scrolls them
    // into its scrollback in order.
    for (i, line) in capture[start..end].split('\n').enumerate() {
        if i > 0 {
            out.push_str("\r\n");
        }
        out.push_str(line);
    }
    // The last rows are still on the joiner's screen: from the bottom row,
    // each line feed pushes one into its scrollback. The lines scrolled in
    // take the current background in xterm, hence the reset.
    let _ = write!(out, "\r\n\x1b[m\x1b[{rows};1H");
    out.extend(std::iter::repeat_n('\n', lines.min(rows - 1)));
}

/// Copies the escape sequences out of basic-format `text`, whose only
/// escapes are SGR (`ESC [ ... m`) and whose text holds no ESC.
fn push_escapes(out: &mut String, mut text: &str) {
    while let Some(at) = text.find('\x1b') {
        let len = text[at..].find('m').map_or(text.len() - at, |m| m + 1);
        out.push_str(&text[at..at + len]);
        text = &text[at + len..];
    }
}

/// The bytes of an escape sequence or UTF-8 character that the output so
/// far has begun but not finished, found by following the transitions of
/// vte (vt100's parser, a DEC ANSI state machine). A snapshot ends with them
/// so that the joiner's parser is where ours is, and the next live bytes
/// finish the sequence on both. Following the same transitions, it marks
/// where the output stops being plain text for [`TerminalModel::feed`].
#[derive(Default)]
struct Pending {
    state: State,
    /// At most [`PENDING_MAX`]; when in [`State::Ground`], a partial
    /// character.
    bytes: Vec<u8>,
}

/// What [`Pending::feed`] found in a chunk, at offsets into it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mark {
    /// A CR in the ground state: where held text may start or be cut.
    Cr(usize),
    /// Something other than plain text: a control, or an escape sequence
    /// other than SGR, set scroll region or a finished sequence.
    Break,
    /// `CSI top ; bottom r` (set scroll region) ends before `end`;
    /// `params` is `None` when they are not plain numbers (or it has
    /// a private marker or intermediates).
    Region {
        end: usize,
        params: Option<(u16, u16)>,
    },
}

/// vte's states, merged where they leave for the same states on the same
/// bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum State {
    #[default]
    Ground,
    Escape,
    EscapeIntermediate,
    Csi,
    DcsEntry,
    DcsParam,
    DcsIntermediate,
    DcsPassthrough,
    Osc,
    /// SOS, PM and APC strings, and a DCS being ignored: they last until
    /// ESC, CAN or SUB.
    Ignored,
}

impl Pending {
    fn feed(&mut self, bytes: &[u8], marks: &mut Vec<Mark>) {
        let mut i = 0;
        while i < bytes.len() {
            if self.state == State::Ground {
                // Only ESC leaves the ground state; text before it is done.
                let text_end = bytes[i..]
                    .iter()
                    .position(|&b| b == ESC)
                    .map_or(bytes.len(), |at| i + at);
                mark_text(&bytes[i..text_end], i, marks);
                if text_end == bytes.len() {
                    self.keep_partial_char(&bytes[i..]);
                    return;
                }
                self.bytes.clear();
                self.push(ESC);
                self.state = State::Escape;
                i = text_end + 1;
                continue;
            }
            let byte = bytes[i];
            i += 1;
            let from = self.state;
            self.state = from.next(byte);
            match self.state {
                State::Ground => {
                    if let Some(mark) = self.finished(from, byte, i) {
                        marks.push(mark);
                    }
                    self.bytes.clear();
                }
                // ESC anywhere starts over.
                State::Escape if byte == ESC => {
                    marks.push(Mark::Break);
                    self.bytes.clear();
                    self.push(ESC);
                }
                // Controls inside a sequence are run (or ignored) at once;
                // replaying them would run them twice. In a DCS they are
                // data.
                _ if is_control(byte) && from != State::DcsPassthrough => {
                    marks.push(Mark::Break);
                }
                _ => self.push(byte),
            }
        }
    }

    /// The mark for the sequence in `bytes` that `last` (at `end` - 1)
    /// ended, coming from state `from`: none for SGR, which is plain.
    fn finished(&self, from: State, last: u8, end: usize) -> Option<Mark> {
        let params = match (from, self.bytes.get(..2)) {
            (State::Csi, Some([ESC, b'['])) => &self.bytes[2..],
            _ => return Some(Mark::Break),
        };
        let plain = |extra: &[u8]| {
            params
                .iter()
                .all(|b| b.is_ascii_digit() || *b == b';' || extra.contains(b))
        };
        match last {
            b'm' if plain(b":") => None,
            b'r' => Some(Mark::Region {
                end,
                params: plain(b"").then(|| region_params(params)).flatten(),
            }),
            _ => Some(Mark::Break),
        }
    }

    fn push(&mut self, byte: u8) {
        if self.bytes.len() < PENDING_MAX {
            self.bytes.push(byte);
        }
    }

    /// `text` ran to the end of the chunk: keeps the character it ends in
    /// the middle of, at most 3 bytes, which may have begun in an earlier
    /// chunk.
    fn keep_partial_char(&mut self, text: &[u8]) {
        if text.len() >= 3 {
            self.bytes.clear();
        }
        self.bytes
            .extend_from_slice(&text[text.len().saturating_sub(3)..]);
        let tail = self.bytes.len().saturating_sub(3);
        self.bytes.drain(..tail);
        let done = self.bytes.len() - unfinished_char_len(&self.bytes);
        self.bytes.drain(..done);
    }
}

impl State {
    /// The state after `byte`, from any state but ground.
    fn next(self, byte: u8) -> State {
        use State::{
            DcsEntry, DcsIntermediate, DcsParam, DcsPassthrough, Escape, EscapeIntermediate,
            Ground, Ignored, Osc,
        };
        match (self, byte) {
            (_, CAN | SUB) => Ground,
            (_, ESC) => Escape,
            (Escape, 0x20..=0x2f) => EscapeIntermediate,
            (Escape, b'P') => DcsEntry,
            (Escape, b'[') => State::Csi,
            (Escape, b']') => Osc,
            (Escape, b'X' | b'^' | b'_') => Ignored,
            (Escape | EscapeIntermediate, 0x30..=0x7e) => Ground,
            (State::Csi, 0x40..=0x7e) => Ground,
            (DcsEntry | DcsParam, 0x20..=0x2f) => DcsIntermediate,
            (DcsEntry, 0x30..=0x3f) => DcsParam,
            (DcsParam, 0x3c..=0x3f) | (DcsIntermediate, 0x30..=0x3f) => Ignored,
            (DcsEntry | DcsParam | DcsIntermediate, 0x40..=0x7e) => DcsPassthrough,
            (DcsPassthrough, ST) | (Osc, BEL) => Ground,
            (state, _) => state,
        }
    }
}

/// Marks the CRs of ground-state `text` (at `offset` in the chunk), and a
/// break if it holds a control other than CR, LF, tab and backspace.
fn mark_text(text: &[u8], offset: usize, marks: &mut Vec<Mark>) {
    for (i, &b) in text.iter().enumerate() {
        match b {
            b'\r' => marks.push(Mark::Cr(offset + i)),
            b'\n' | b'\t' | 0x08 => {}
            0x00..=0x1f | 0x7f if marks.last() != Some(&Mark::Break) => marks.push(Mark::Break),
            _ => {}
        }
    }
}

/// `top ; bottom` of a set scroll region, 0 for one left out; `None` if
/// there are more or they overflow.
fn region_params(params: &[u8]) -> Option<(u16, u16)> {
    let mut numbers = params.split(|&b| b == b';').map(|n| {
        n.iter().try_fold(0u16, |acc, &d| {
            acc.checked_mul(10)?.checked_add(u16::from(d - b'0'))
        })
    });
    let top = numbers.next().flatten()?;
    let bottom = numbers.next().unwrap_or(Some(0))?;
    numbers.next().is_none().then_some((top, bottom))
}

/// C0 controls other than CAN, SUB and ESC, which vte runs inside a sequence.
fn is_control(byte: u8) -> bool {
    matches!(byte, 0x00..=0x17 | 0x19 | 0x1c..=0x1f)
}

/// How many bytes at the end of `tail` begin a UTF-8 character that is
/// not finished yet (0 if none).
fn unfinished_char_len(tail: &[u8]) -> usize {
    let is_continuation = |b: u8| (0x80..=0xbf).contains(&b);
    let Some(start) = tail.iter().rposition(|&b| !is_continuation(b)) else {
        return 0;
    };
    match std::str::from_utf8(&tail[start..]) {
        Err(e) if e.valid_up_to() == 0 && e.error_len().is_none() => tail.len() - start,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nz(n: u16) -> NonZeroU16 {
        NonZeroU16::new(n).unwrap()
    }

    /// The terminal of a client that joins now: a fresh parser of the
    /// model's size that has read only the snapshot.
    fn join(model: &mut TerminalModel, max: usize) -> vt100::Parser {
        let (rows, cols) = model.size();
        let mut fresh = vt100::Parser::new(nz(rows), nz(cols), max);
        fresh.process(&model.snapshot(max));
        fresh
    }

    fn screen_of(model: &mut TerminalModel) -> vt100::Screen {
        model.settle();
        model.parser.screen().clone()
    }

    /// The main screen, beneath the alternate one if that is active.
    fn main_of(screen: &vt100::Screen) -> vt100::Screen {
        let (rows, cols) = screen.size();
        let mut parser = vt100::Parser::new(rows, cols, 0);
        *parser.screen_mut() = screen.clone();
        parser.process(b"\x1b[?47l");
        parser.screen().clone()
    }

    /// The main screen's scrollback, oldest row first, as what the export
    /// keeps: each row's text, then every cell with something printed in it
    /// (blank cells may come back as spaces, coloured like their neighbour).
    fn scrollback_of(screen: &vt100::Screen) -> Vec<String> {
        let mut screen = main_of(screen);
        let (rows, cols) = screen.size();
        let mut out = Vec::new();
        let mut remaining = screen.scrollback_len();
        while remaining > 0 {
            screen.set_scrollback(remaining);
            let take = remaining.min(usize::from(rows.get()));
            for (row, text) in screen.rows(0, cols.get()).take(take).enumerate() {
                let mut line = text.trim_end().to_string();
                for col in 0..cols.get() {
                    let cell = screen.cell(u16::try_from(row).unwrap(), col).unwrap();
                    if !cell.contents().trim().is_empty() {
                        let attrs = [cell.bold(), cell.dim(), cell.italic(), cell.underline()];
                        let more = [cell.inverse(), cell.is_wide()];
                        let (fg, bg) = (cell.fgcolor(), cell.bgcolor());
                        let _ = write!(
                            line,
                            " | {col} {} {fg:?} {bg:?} {attrs:?} {more:?}",
                            cell.contents()
                        );
                    }
                }
                out.push(line);
            }
            remaining -= take;
        }
        out
    }

    /// What a viewer sees and what its input sends: cells, cursor, modes.
    fn assert_same_screen(got: &vt100::Screen, want: &vt100::Screen) {
        assert_eq!(got.size(), want.size());
        let (rows, cols) = want.size();
        for row in 0..rows.get() {
            for col in 0..cols.get() {
                assert_eq!(got.cell(row, col), want.cell(row, col), "cell {row},{col}");
            }
        }
        assert_eq!(got.contents_formatted(), want.contents_formatted());
        assert_eq!(got.cursor_position(), want.cursor_position());
        assert_eq!(got.hide_cursor(), want.hide_cursor());
        assert_eq!(got.alternate_screen(), want.alternate_screen());
        assert_eq!(got.input_mode_formatted(), want.input_mode_formatted());
        assert_eq!(got.application_cursor(), want.application_cursor());
        assert_eq!(got.application_keypad(), want.application_keypad());
        assert_eq!(got.bracketed_paste(), want.bracketed_paste());
        assert_eq!(got.mouse_protocol_mode(), want.mouse_protocol_mode());
        assert_eq!(
            got.mouse_protocol_encoding(),
            want.mouse_protocol_encoding()
        );
        if want.alternate_screen() {
            assert_same_screen(&main_of(got), &main_of(want));
        }
    }

    /// A client joining now with `max` lines of scrollback sees what the
    /// model holds, and the last `max` lines of its scrollback.
    fn assert_joins(model: &mut TerminalModel, max: usize) -> vt100::Parser {
        let fresh = join(model, max);
        let want = screen_of(model);
        assert_same_screen(fresh.screen(), &want);
        let want_lines = scrollback_of(&want);
        let got_lines = scrollback_of(fresh.screen());
        let kept = want_lines.len().min(max);
        assert_eq!(got_lines.len(), kept, "scrollback lines");
        assert_eq!(got_lines[..], want_lines[want_lines.len() - kept..]);
        fresh
    }

    fn model_of(rows: u16, cols: u16, bytes: &[u8]) -> TerminalModel {
        let mut model = TerminalModel::new(rows, cols, 1000);
        model.feed(bytes);
        model
    }

    /// Checks `bytes` every way: fed whole or a byte at a time, joined with
    /// all, some or none of the scrollback.
    fn check(rows: u16, cols: u16, bytes: &[u8]) -> TerminalModel {
        let mut model = model_of(rows, cols, bytes);
        let mut bytewise = TerminalModel::new(rows, cols, 1000);
        for byte in bytes {
            bytewise.feed(std::slice::from_ref(byte));
        }
        assert_same_screen(&screen_of(&mut bytewise), &screen_of(&mut model));
        assert_eq!(
            scrollback_of(&screen_of(&mut bytewise)),
            scrollback_of(&screen_of(&mut model))
        );
        for max in [0, 1, 3, usize::from(rows) + 1, 1000] {
            assert_joins(&mut model, max);
        }
        model
    }

    fn numbered_lines(n: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for i in 0..n {
            out.extend_from_slice(format!("line {i}\r\n").as_bytes());
        }
        out
    }

    #[test]
    fn plain_lines_scroll_into_the_joiners_scrollback() {
        let mut model = check(5, 20, &numbered_lines(30));
        let fresh = assert_joins(&mut model, 10);
        let mut fresh_screen = fresh.screen().clone();
        fresh_screen.set_scrollback(10);
        assert_eq!(fresh_screen.rows(0, 20).next().unwrap(), "line 16");
        assert_eq!(screen_of(&mut model).cursor_position(), (4, 0));

        // Less scrollback than the screen is tall, and none at all.
        check(5, 20, &numbered_lines(7));
        check(5, 20, b"no newline yet");
        check(1, 10, &numbered_lines(4));
    }

    #[test]
    fn colours_and_attributes() {
        let mut bytes = Vec::new();
        for i in 0..16 {
            bytes.extend_from_slice(
                format!("\x1b[{}m{i:x}", if i < 8 { 30 + i } else { 82 + i }).as_bytes(),
            );
            bytes.extend_from_slice(
                format!("\x1b[{}m{i:x}", if i < 8 { 40 + i } else { 92 + i }).as_bytes(),
            );
        }
        bytes.extend_from_slice(b"\x1b[m\r\n");
        for i in [16, 100, 196, 231, 232, 255] {
            bytes.extend_from_slice(format!("\x1b[38;5;{i}m#\x1b[48;5;{i}m ").as_bytes());
        }
        bytes.extend_from_slice(
            b"\x1b[m\r\n\x1b[38;2;255;128;0mtrue\x1b[48;2;1;2;3mcolour\x1b[m\r\n",
        );
        bytes.extend_from_slice(b"\x1b[1mbold\x1b[22m \x1b[2mdim\x1b[22m \x1b[3mitalic\x1b[23m ");
        bytes.extend_from_slice(
            b"\x1b[4munder\x1b[24m \x1b[7minverse\x1b[27m \x1b[1;4;7;31;44mall\x1b[m\r\n",
        );
        // Blank cells that carry a background: erased with a colour set,
        // and skipped over by the cursor in the middle of coloured text.
        bytes.extend_from_slice(b"\x1b[41m\x1b[K\x1b[m\r\n\x1b[44mA\x1b[5CB\x1b[2X\x1b[m\r\n");
        // Drawing attributes still set when the snapshot is taken.
        bytes.extend_from_slice(b"\x1b[1;35mpending");
        let mut model = check(8, 40, &bytes);
        let screen = screen_of(&mut model);
        assert_eq!(
            screen.cell(2, 0).unwrap().fgcolor(),
            vt100::Color::Rgb(255, 128, 0)
        );
        assert!(screen.bold());

        // The same lines again, scrolled into the scrollback.
        let mut scrolled = bytes.clone();
        scrolled.extend_from_slice(b"\x1b[m");
        scrolled.extend_from_slice(&numbered_lines(12));
        check(8, 40, &scrolled);
    }

    #[test]
    fn scrollback_cut_inside_a_coloured_run() {
        // One SGR for many rows: a joiner keeping only the last few must
        // still get their colour, and the background under the line feeds
        // that push them into its scrollback must be reset, since xterm
        // fills new lines with it.
        let mut bytes = b"\x1b[1;31;44m".to_vec();
        bytes.extend_from_slice(&numbered_lines(12));
        bytes.extend_from_slice(b"\x1b[m");
        bytes.extend_from_slice(&numbered_lines(5));
        let mut model = check(4, 12, &bytes);
        let fresh = assert_joins(&mut model, 3);
        let mut fresh = fresh.screen().clone();
        fresh.set_scrollback(3);
        let cell = fresh.cell(0, 0).unwrap();
        assert_eq!(
            (cell.fgcolor(), cell.bgcolor(), cell.bold()),
            (vt100::Color::Idx(1), vt100::Color::Idx(4), true)
        );
        let snapshot = String::from_utf8(model.snapshot(3)).unwrap();
        let push = snapshot.find("\x1b[4;1H").unwrap();
        assert!(snapshot[..push].ends_with("\x1b[m"), "{snapshot:?}");
    }

    #[test]
    fn rows_narrowed_by_a_resize_reach_the_joiner_wrapped() {
        let mut model = TerminalModel::new(4, 30, 1000);
        for i in 0..6 {
            model.feed(format!("{i}{}\r\n", "abcdefghij".repeat(2)).as_bytes());
        }
        model.resize(4, 12);
        let fresh = join(&mut model, 1000);
        assert_same_screen(fresh.screen(), &screen_of(&mut model));
        // vt100 keeps the rows whole but shows them cut; the joiner, like
        // xterm.js, wraps them.
        let mut fresh = fresh.screen().clone();
        fresh.set_scrollback(fresh.scrollback_len());
        let rows: Vec<String> = fresh.rows(0, 12).take(2).collect();
        assert_eq!(rows, ["0abcdefghija", "bcdefghij"]);
        assert!(fresh.row_wrapped(0));
        // The bound counts the joiner's rows.
        assert_eq!(join(&mut model, 5).screen().scrollback_len(), 5);
    }

    #[test]
    fn cursor_moves_and_erases() {
        let mut bytes = numbered_lines(3);
        bytes.extend_from_slice(b"\x1b[2;5Hcup\x1b[2Aup\x1b[3Bdown\x1b[4Cfwd\x1b[10Dback");
        bytes.extend_from_slice(b"\x1b[7GG\x1b[5dd\x1b[2EE\x1b[FF\x1b[H\x1b[4;1H");
        bytes.extend_from_slice(b"0123456789\x1b[5G\x1b[K\r\n0123456789\x1b[5G\x1b[1K\r\n");
        bytes.extend_from_slice(b"0123456789\x1b[2K\x1b[3;3H\x1b[45m\x1b[J\x1b[m\x1b[2;3H\x1b[1J");
        bytes.extend_from_slice(b"\x1b[6;1H\x1b[3P\x1b[2@ins\x1b[2L\x1b[M");
        let mut model = check(8, 16, &bytes);
        assert_eq!(
            screen_of(&mut model).cell(2, 5).unwrap().bgcolor(),
            vt100::Color::Idx(5)
        );
        check(
            8,
            16,
            &[&numbered_lines(12)[..], b"\x1b[2J\x1b[5;5Hafter clear"].concat(),
        );
    }

    #[test]
    fn scroll_regions() {
        let mut bytes = numbered_lines(6);
        // Scroll lines 2-5 only, both ways, then scroll the whole screen.
        bytes.extend_from_slice(b"\x1b[2;5r\x1b[5;1Ha\nb\nc\x1b[2;1H\x1bMtop\x1b[2S\x1b[T\x1b[r");
        bytes.extend_from_slice(b"\x1b[8;1H\nlast\r\n");
        check(8, 16, &bytes);
    }

    #[test]
    fn wide_characters_and_emoji() {
        let mut bytes = Vec::new();
        bytes.extend_from_slice("漢字テスト 👍🏽 ❤\u{fe0f} é e\u{301}\r\n".as_bytes());
        // A wide character that does not fit in the last column wraps.
        bytes.extend_from_slice("123456789漢\r\n".as_bytes());
        bytes.extend_from_slice("1234567890漢字\r\n".as_bytes());
        // Overwriting half of a wide character.
        bytes.extend_from_slice("漢字\x1b[2Dx\r\n".as_bytes());
        let mut model = check(10, 10, &bytes);
        let screen = screen_of(&mut model);
        assert_eq!(screen.cell(0, 0).unwrap().contents(), "漢");
        assert!(screen.cell(0, 0).unwrap().is_wide() && screen.row_wrapped(0));
        check(10, 10, &[&bytes[..], &numbered_lines(12)[..]].concat());
    }

    #[test]
    fn sequences_split_anywhere_parse_the_same() {
        let mut bytes = "\x1b[1;38;2;10;20;30mé漢👍\x1b[m\x1b]0;title\x07"
            .as_bytes()
            .to_vec();
        bytes.extend_from_slice(b"\x1bP1$qm\x1b\\\x1b[?1049h\x1b[3;3Hfull\x1b[?1049l");
        let mut whole = model_of(4, 12, &bytes);
        for split in 0..=bytes.len() {
            let mut model = TerminalModel::new(4, 12, 1000);
            model.feed(&bytes[..split]);
            model.feed(&bytes[split..]);
            assert_same_screen(&screen_of(&mut model), &screen_of(&mut whole));
        }
        check(4, 12, &bytes);
    }

    /// vim, less or top: the alternate screen, coloured boxes, a hidden
    /// cursor and input modes, over a shell with scrollback.
    fn full_screen_program() -> Vec<u8> {
        let mut bytes = numbered_lines(20);
        bytes.extend_from_slice(
            b"$ vim\x1b[?1049h\x1b[?1h\x1b=\x1b[?2004h\x1b[?1002h\x1b[?1006h\x1b[2 q",
        );
        bytes.extend_from_slice(b"\x1b[H\x1b[2J\x1b[?25l");
        for (row, colour) in [(2, 41), (5, 42), (8, 44)] {
            for line in 0..2 {
                let at = format!("\x1b[{};{}H\x1b[{colour};97m", row + line, row * 2);
                bytes.extend_from_slice(at.as_bytes());
                bytes.extend_from_slice(if line == 0 { b" box  " } else { b"      " });
            }
        }
        bytes.extend_from_slice(b"\x1b[m\x1b[10;1H\x1b[7m-- INSERT --\x1b[m\x1b[4;9H");
        bytes
    }

    #[test]
    fn alternate_screen_keeps_the_shell_beneath() {
        let bytes = full_screen_program();
        let mut model = check(10, 30, &bytes);
        let screen = screen_of(&mut model);
        assert!(screen.alternate_screen());
        assert!(screen.hide_cursor());
        assert_eq!(screen.cursor_position(), (3, 8));
        assert_eq!(
            screen.mouse_protocol_mode(),
            vt100::MouseProtocolMode::ButtonMotion
        );

        // The program exits: the joiner's terminal brings the shell back too.
        let mut fresh = assert_joins(&mut model, 1000);
        let exit = b"\x1b[?1049l\x1b[?25h\x1b[?1l\x1b>\x1b[?2004l\x1b[?1002l\x1b[?1006l\x1b[0 q$ ";
        fresh.process(exit);
        model.feed(exit);
        assert_same_screen(fresh.screen(), &screen_of(&mut model));
        assert!(!screen_of(&mut model).alternate_screen());
        check(10, 30, &[&bytes[..], &exit[..]].concat());
    }

    #[test]
    fn resize() {
        let mut model = model_of(
            10,
            30,
            &[&numbered_lines(25)[..], &full_screen_program()[..]].concat(),
        );
        model.resize(6, 20);
        assert_eq!(model.size(), (6, 20));
        assert_joins(&mut model, 1000);
        model.feed(b"\x1b[?1049l");
        model.resize(12, 40);
        assert_joins(&mut model, 1000);
        model.feed("long enough to wrap at forty columns: 漢字漢字\r\n".as_bytes());
        model.resize(12, 25);
        assert_joins(&mut model, 1000);
        assert_joins(&mut model, 4);
        assert_eq!(TerminalModel::new(0, 0, 0).size(), (1, 1));
    }

    #[test]
    fn wrapped_lines_stay_joined_in_scrollback() {
        // A line three rows long, then enough lines to push it off.
        let mut bytes = vec![b'x'; 25];
        bytes.extend_from_slice(b"\r\n");
        bytes.extend_from_slice(&numbered_lines(10));
        let mut model = check(4, 10, &bytes);
        let mut fresh = join(&mut model, 1000);
        let screen = fresh.screen_mut();
        screen.set_scrollback(screen.scrollback_len());
        assert!(screen.row_wrapped(0) && screen.row_wrapped(1) && !screen.row_wrapped(2));
    }

    #[test]
    fn late_joiner_then_live_bytes_stays_equal() {
        let mut script = numbered_lines(4);
        script.extend_from_slice("\x1b[32mgreen é漢👍 \x1b[1;4mbold\x1b[m\r\n".as_bytes());
        script.extend_from_slice(
            b"\x1b]0;a title\x07\x1b]2;st end\x1b\\\x1bP1$qm\x1b\\\x1b_apc\x1b\\",
        );
        script.extend_from_slice(b"exactly twelve\x1b[3;5H\x1b[43mover\x1b[K\x1b[m\r\n\r\n");
        script.extend_from_slice(
            b"\x1b[?1049h\x1b[?25l\x1b[?1h\x1b=\x1b[2;2H\x1b[45mbox\x1b[m\x1b[?1000h",
        );
        script.extend_from_slice(
            "ÿ€\x1b[38;5;200mpink\x1b[m\x1b[?1049l\x1b[?25h\x1b[?1000l".as_bytes(),
        );
        script.extend_from_slice(&numbered_lines(5));
        // Every byte boundary is a join point: inside CSI, OSC, DCS and APC
        // sequences, inside UTF-8 characters and between them.
        for split in 0..=script.len() {
            let mut shell = TerminalModel::new(5, 12, 1000);
            shell.feed(&script[..split]);
            let mut joiner = TerminalModel::new(5, 12, 1000);
            joiner.feed(&shell.snapshot(1000));
            for chunk in script[split..].chunks(7) {
                shell.feed(chunk);
                joiner.feed(chunk);
            }
            let (got, want) = (screen_of(&mut joiner), screen_of(&mut shell));
            assert_same_screen(&got, &want);
            assert_eq!(
                scrollback_of(&got),
                scrollback_of(&want),
                "split at {split}"
            );
        }
    }

    #[test]
    fn unfinished_sequences_are_kept() {
        let mut model = TerminalModel::new(3, 10, 0);
        model.feed(b"ab\x1b[3");
        assert_eq!(model.pending.bytes, b"\x1b[3");
        model.feed(b"1");
        assert_eq!(model.pending.bytes, b"\x1b[31");
        model.feed(b"mc");
        assert!(model.pending.bytes.is_empty());
        model.feed(&"漢".as_bytes()[..1]);
        model.feed(&"漢".as_bytes()[1..2]);
        assert_eq!(model.pending.bytes, &"漢".as_bytes()[..2]);
        model.feed(&"漢".as_bytes()[2..]);
        assert!(model.pending.bytes.is_empty());
        // Controls run inside a sequence are not replayed.
        model.feed(b"\x1b[\r2");
        assert_eq!(model.pending.bytes, b"\x1b[2");
        model.feed(b"J\x1b]0;");
        model.feed(&vec![b'x'; 2 * PENDING_MAX]);
        assert_eq!(model.pending.bytes.len(), PENDING_MAX);
        model.feed(b"\x07");
        assert!(model.pending.bytes.is_empty());
    }

    #[test]
    fn large_screen_snapshot() {
        let mut model = TerminalModel::new(50, 200, 1000);
        let mut bytes = Vec::new();
        for i in 0..1100 {
            let line = format!("\x1b[3{}m{i:>5}\x1b[m {}\r\n", i % 8, "word ".repeat(38));
            bytes.extend_from_slice(line.as_bytes());
        }
        bytes.extend_from_slice(&full_screen_program());
        model.feed(&bytes);
        let started = std::time::Instant::now();
        let snapshot = model.snapshot(1000);
        println!(
            "snapshot of 50x200 with 1000 lines of scrollback: {} bytes in {:?}",
            snapshot.len(),
            started.elapsed()
        );
        assert_joins(&mut model, 1000);
    }

    /// A flood in `chunk`-byte pieces: the model must show what a parser
    /// fed every byte shows, screen and scrollback, while it skips text.
    fn check_flood(rows: u16, cols: u16, bytes: &[u8], chunk: usize) -> TerminalModel {
        let mut model = TerminalModel::new(rows, cols, 50);
        let mut reference = vt100::Parser::new(nz(rows), nz(cols), 50);
        for piece in bytes.chunks(chunk) {
            model.feed(piece);
            reference.process(piece);
        }
        let (got, want) = (screen_of(&mut model), reference.screen().clone());
        assert_same_screen(&got, &want);
        assert_eq!(
            scrollback_of(&got),
            scrollback_of(&want),
            "chunks of {chunk}"
        );
        model
    }

    /// Lines of text with colours, wide characters, tabs, lines longer
    /// than the screen is wide, and lines ending in a bare LF.
    fn flood(lines: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for i in 0..lines {
            let line = match i % 7 {
                0 => format!("\x1b[3{}mred {i}\x1b[1m bold\r\n", i % 8),
                1 => format!("plain {i}\ttab\x08\x08bs\r\n"),
                2 => format!("{}{i}\r\n", "long ".repeat(9)),
                3 => format!("漢字 é {i}\x1b[m\x1b[44m bg \x1b[0m\r\n"),
                4 => format!("bare lf {i}\n"),
                5 => format!("\x1b[38;2;1;2;3;48:5:20mtrue {i}\r\n"),
                _ => format!("{i}\r\n"),
            };
            out.extend_from_slice(line.as_bytes());
        }
        out
    }

    /// Whether the model, fed `bytes`, holds back only part of them.
    fn skips(model: &mut TerminalModel, bytes: &[u8]) -> bool {
        model.feed(bytes);
        model.held.on && model.held.bytes.len() < bytes.len() / 2
    }

    #[test]
    fn text_that_scrolls_out_is_skipped_exactly() {
        let text = flood(40_000);
        assert!(text.len() > 2 * DROP_AT);
        for chunk in [7, 4096, 65536] {
            assert!(skips(&mut TerminalModel::new(6, 20, 50), &text));
            check_flood(6, 20, &text, chunk);
        }
        // The flood ends inside a sequence and a character, then a
        // full-screen program starts.
        let mut bytes = text.clone();
        bytes.extend_from_slice("\x1b[1;3".as_bytes());
        bytes.extend_from_slice(&"漢".as_bytes()[..2]);
        check_flood(6, 20, &bytes, 65536);
        bytes.extend_from_slice(&"漢".as_bytes()[2..]);
        bytes.extend_from_slice(&full_screen_program());
        bytes.extend_from_slice(&text);
        check_flood(10, 30, &bytes, 65536);
        let mut exit = bytes.clone();
        exit.extend_from_slice(b"\x1b[?1049l$ ");
        exit.extend_from_slice(&text);
        check_flood(10, 30, &exit, 4096);
    }

    #[test]
    fn text_is_not_skipped_under_a_scroll_region() {
        let text = flood(20_000);
        // A status line below the region, the cursor drawing on it: the
        // flood overwrites the last row again and again.
        let mut below = b"\x1b[1;5r\x1b[6;1H".to_vec();
        below.extend_from_slice(&text);
        check_flood(6, 20, &below, 65536);
        assert!(!skips(&mut TerminalModel::new(6, 20, 50), &below));
        // Inside the region, and in a region on the alternate screen only.
        let mut inside = b"\x1b[2;5r\x1b[3;1H".to_vec();
        inside.extend_from_slice(&text);
        check_flood(6, 20, &inside, 65536);
        let mut alt = b"\x1b[?1049h\x1b[2;4r\x1b[6;1H".to_vec();
        alt.extend_from_slice(&text);
        alt.extend_from_slice(b"\x1b[?1049l");
        alt.extend_from_slice(&text);
        check_flood(6, 20, &alt, 65536);
        // Reset to the whole screen (both ways), or by a resize: skipped
        // again.
        for reset in [&b"\x1b[r"[..], b"\x1b[1;6r", b"\x1b[0;0r"] {
            let mut again = below.clone();
            again.extend_from_slice(reset);
            again.extend_from_slice(&text);
            check_flood(6, 20, &again, 65536);
            let mut model = TerminalModel::new(6, 20, 50);
            assert!(skips(&mut model, &again));
            model.feed(&below);
            assert!(!skips(&mut model, &text));
            model.resize(8, 20);
            assert!(skips(&mut model, &text));
        }
    }

    #[test]
    fn is_send() {
        fn sendable<T: Send>() {}
        sendable::<TerminalModel>();
    }
}
