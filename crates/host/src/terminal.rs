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
use std::sync::{Mutex, PoisonError};

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

/// One shell's terminal state, fed its PTY output.
pub struct TerminalModel {
    /// Locked only by `snapshot`, which has to switch to the main screen and
    /// back to read it while a full-screen program runs. A mutex rather than
    /// a `RefCell` keeps the model `Sync`.
    parser: Mutex<vt100::Parser>,
    pending: Pending,
}

impl TerminalModel {
    /// `rows`/`cols` of the PTY (0 counts as 1, vt100's minimum);
    /// `scrollback` = lines kept above the screen.
    pub fn new(rows: u16, cols: u16, scrollback: usize) -> TerminalModel {
        TerminalModel {
            parser: Mutex::new(vt100::Parser::new(
                at_least_one(rows),
                at_least_one(cols),
                scrollback,
            )),
            pending: Pending::default(),
        }
    }

    /// Raw PTY output; it may split UTF-8 characters and escape sequences
    /// anywhere.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.parser_mut().process(bytes);
        self.pending.feed(bytes);
    }

    /// Rows pushed off the top go to the scrollback; growing pulls them back
    /// (vt100 does not reflow wrapped lines).
    pub fn resize(&mut self, rows: u16, cols: u16) {
        self.parser_mut()
            .set_size(at_least_one(rows), at_least_one(cols));
    }

    /// (rows, cols).
    pub fn size(&self) -> (u16, u16) {
        let (rows, cols) = self.lock().screen().size();
        (rows.get(), cols.get())
    }

    /// Bytes that, written to a fresh xterm-compatible terminal of
    /// [`size`](Self::size), reproduce this one: up to `max_scrollback_lines`
    /// rows of scrollback (as that terminal wraps them), then the screens,
    /// cursor and input modes (see the module docs for what is and is not
    /// carried).
    pub fn snapshot(&self, max_scrollback_lines: usize) -> Vec<u8> {
        let mut parser = self.lock();
        let screen = parser.screen_mut();
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

    fn lock(&self) -> std::sync::MutexGuard<'_, vt100::Parser> {
        // Only a panic inside vt100 mid-snapshot poisons it; the model then
        // goes on, with its screen possibly lost, rather than take the shell
        // down.
        self.parser.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn parser_mut(&mut self) -> &mut vt100::Parser {
        self.parser
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
    }
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
/// finish the sequence on both.
#[derive(Default)]
struct Pending {
    state: State,
    /// At most [`PENDING_MAX`]; when in [`State::Ground`], a partial
    /// character.
    bytes: Vec<u8>,
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
    fn feed(&mut self, mut bytes: &[u8]) {
        while let Some((&byte, rest)) = bytes.split_first() {
            if self.state == State::Ground {
                // Only ESC leaves the ground state; text before it is done.
                let Some(at) = bytes.iter().position(|&b| b == ESC) else {
                    self.keep_partial_char(bytes);
                    return;
                };
                self.bytes.clear();
                self.push(ESC);
                self.state = State::Escape;
                bytes = &bytes[at + 1..];
                continue;
            }
            bytes = rest;
            let from = self.state;
            self.state = from.next(byte);
            match self.state {
                State::Ground => self.bytes.clear(),
                // ESC anywhere starts over.
                State::Escape if byte == ESC => {
                    self.bytes.clear();
                    self.push(ESC);
                }
                // Controls inside a sequence are run (or ignored) at once;
                // replaying them would run them twice. In a DCS they are
                // data.
                _ if is_control(byte) && from != State::DcsPassthrough => {}
                _ => self.push(byte),
            }
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
    fn join(model: &TerminalModel, max: usize) -> vt100::Parser {
        let (rows, cols) = model.size();
        let mut fresh = vt100::Parser::new(nz(rows), nz(cols), max);
        fresh.process(&model.snapshot(max));
        fresh
    }

    fn screen_of(model: &TerminalModel) -> vt100::Screen {
        model.lock().screen().clone()
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
    fn assert_joins(model: &TerminalModel, max: usize) -> vt100::Parser {
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
        let model = model_of(rows, cols, bytes);
        let mut bytewise = TerminalModel::new(rows, cols, 1000);
        for byte in bytes {
            bytewise.feed(std::slice::from_ref(byte));
        }
        assert_same_screen(&screen_of(&bytewise), &screen_of(&model));
        assert_eq!(
            scrollback_of(&screen_of(&bytewise)),
            scrollback_of(&screen_of(&model))
        );
        for max in [0, 1, 3, usize::from(rows) + 1, 1000] {
            assert_joins(&model, max);
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
        let model = check(5, 20, &numbered_lines(30));
        let fresh = assert_joins(&model, 10);
        let mut fresh_screen = fresh.screen().clone();
        fresh_screen.set_scrollback(10);
        assert_eq!(fresh_screen.rows(0, 20).next().unwrap(), "line 16");
        assert_eq!(screen_of(&model).cursor_position(), (4, 0));

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
        let model = check(8, 40, &bytes);
        let screen = screen_of(&model);
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
        let model = check(4, 12, &bytes);
        let fresh = assert_joins(&model, 3);
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
        let fresh = join(&model, 1000);
        assert_same_screen(fresh.screen(), &screen_of(&model));
        // vt100 keeps the rows whole but shows them cut; the joiner, like
        // xterm.js, wraps them.
        let mut fresh = fresh.screen().clone();
        fresh.set_scrollback(fresh.scrollback_len());
        let rows: Vec<String> = fresh.rows(0, 12).take(2).collect();
        assert_eq!(rows, ["0abcdefghija", "bcdefghij"]);
        assert!(fresh.row_wrapped(0));
        // The bound counts the joiner's rows.
        assert_eq!(join(&model, 5).screen().scrollback_len(), 5);
    }

    #[test]
    fn cursor_moves_and_erases() {
        let mut bytes = numbered_lines(3);
        bytes.extend_from_slice(b"\x1b[2;5Hcup\x1b[2Aup\x1b[3Bdown\x1b[4Cfwd\x1b[10Dback");
        bytes.extend_from_slice(b"\x1b[7GG\x1b[5dd\x1b[2EE\x1b[FF\x1b[H\x1b[4;1H");
        bytes.extend_from_slice(b"0123456789\x1b[5G\x1b[K\r\n0123456789\x1b[5G\x1b[1K\r\n");
        bytes.extend_from_slice(b"0123456789\x1b[2K\x1b[3;3H\x1b[45m\x1b[J\x1b[m\x1b[2;3H\x1b[1J");
        bytes.extend_from_slice(b"\x1b[6;1H\x1b[3P\x1b[2@ins\x1b[2L\x1b[M");
        let model = check(8, 16, &bytes);
        assert_eq!(
            screen_of(&model).cell(2, 5).unwrap().bgcolor(),
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
        let model = check(10, 10, &bytes);
        let screen = screen_of(&model);
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
        let whole = model_of(4, 12, &bytes);
        for split in 0..=bytes.len() {
            let mut model = TerminalModel::new(4, 12, 1000);
            model.feed(&bytes[..split]);
            model.feed(&bytes[split..]);
            assert_same_screen(&screen_of(&model), &screen_of(&whole));
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
        let model = check(10, 30, &bytes);
        let screen = screen_of(&model);
        assert!(screen.alternate_screen());
        assert!(screen.hide_cursor());
        assert_eq!(screen.cursor_position(), (3, 8));
        assert_eq!(
            screen.mouse_protocol_mode(),
            vt100::MouseProtocolMode::ButtonMotion
        );

        // The program exits: the joiner's terminal brings the shell back too.
        let mut fresh = assert_joins(&model, 1000);
        let exit = b"\x1b[?1049l\x1b[?25h\x1b[?1l\x1b>\x1b[?2004l\x1b[?1002l\x1b[?1006l\x1b[0 q$ ";
        fresh.process(exit);
        let mut model = model;
        model.feed(exit);
        assert_same_screen(fresh.screen(), &screen_of(&model));
        assert!(!screen_of(&model).alternate_screen());
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
        assert_joins(&model, 1000);
        model.feed(b"\x1b[?1049l");
        model.resize(12, 40);
        assert_joins(&model, 1000);
        model.feed("long enough to wrap at forty columns: 漢字漢字\r\n".as_bytes());
        model.resize(12, 25);
        assert_joins(&model, 1000);
        assert_joins(&model, 4);
        assert_eq!(TerminalModel::new(0, 0, 0).size(), (1, 1));
    }

    #[test]
    fn wrapped_lines_stay_joined_in_scrollback() {
        // A line three rows long, then enough lines to push it off.
        let mut bytes = vec![b'x'; 25];
        bytes.extend_from_slice(b"\r\n");
        bytes.extend_from_slice(&numbered_lines(10));
        let model = check(4, 10, &bytes);
        let mut fresh = join(&model, 1000);
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
            let (got, want) = (screen_of(&joiner), screen_of(&shell));
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
        assert_joins(&model, 1000);
    }

    #[test]
    fn is_send_and_sync() {
        fn shareable<T: Send + Sync>() {}
        shareable::<TerminalModel>();
    }
}
