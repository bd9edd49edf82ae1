//! The command language: a prompt's text parsed into [`Command`]s, one per
//! line, and how `say` cuts its text into chunks. Pure functions, no I/O.

use std::time::Duration;

/// One line of a prompt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Command<'a> {
    /// `say <text>`: stream text as agent message chunks.
    Say(&'a str),
    /// `think <text>`: one agent thought chunk.
    Think(&'a str),
    /// `plan <step>; <step>; ...`: a plan whose entries are then worked off.
    Plan(Vec<&'a str>),
    /// `run <shell command line>`: run it in a client terminal.
    Run(&'a str),
    /// `write <path> <content...>`: write a file after asking permission.
    Write { path: &'a str, content: &'a str },
    /// `read <path>`: read a file through the client.
    Read(&'a str),
    /// `wait`: idle until the turn is cancelled.
    Wait,
    /// `sleep <ms>`: pause.
    Sleep(Duration),
    /// `env <NAME>`: say whether a variable is set, never its value.
    Env(&'a str),
    /// `turn`: say which turn of the session this is.
    Turn,
    /// `crash`: exit the process mid-turn.
    Crash,
    /// `garbage`: print non-JSON lines on stdout.
    Garbage,
    /// `stream <count>`: that many numbered, timestamped message chunks, as
    /// fast as the output takes them (the session throughput benchmark).
    Stream(u64),
    /// Anything else, kept whole for the "unknown command" message.
    Unknown(&'a str),
}

/// Parse a prompt's text. Lines are trimmed; blank lines are skipped.
pub(crate) fn parse(script: &str) -> Vec<Command<'_>> {
    script
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .map(parse_line)
        .collect()
}

/// Parse one trimmed, non-empty line. The command word is case-sensitive; a
/// known command with a missing or malformed argument is [`Command::Unknown`].
fn parse_line(line: &str) -> Command<'_> {
    let (word, rest) = match line.split_once(char::is_whitespace) {
        Some((word, rest)) => (word, rest.trim_start()),
        None => (line, ""),
    };
    let command = match word {
        "say" if !rest.is_empty() => Some(Command::Say(rest)),
        "think" if !rest.is_empty() => Some(Command::Think(rest)),
        "plan" => {
            let steps: Vec<&str> = rest
                .split(';')
                .map(str::trim)
                .filter(|step| !step.is_empty())
                .collect();
            (!steps.is_empty()).then_some(Command::Plan(steps))
        }
        "run" if !rest.is_empty() => Some(Command::Run(rest)),
        "write" if !rest.is_empty() => Some(match rest.split_once(char::is_whitespace) {
            Some((path, content)) => Command::Write {
                path,
                content: content.trim_start(),
            },
            None => Command::Write {
                path: rest,
                content: "",
            },
        }),
        "read" if is_one_word(rest) => Some(Command::Read(rest)),
        "wait" if rest.is_empty() => Some(Command::Wait),
        "sleep" => rest
            .parse::<u64>()
            .ok()
            .map(|ms| Command::Sleep(Duration::from_millis(ms))),
        "env" if is_one_word(rest) => Some(Command::Env(rest)),
        "turn" if rest.is_empty() => Some(Command::Turn),
        "crash" if rest.is_empty() => Some(Command::Crash),
        "garbage" if rest.is_empty() => Some(Command::Garbage),
        "stream" => rest.parse::<u64>().ok().map(Command::Stream),
        _ => None,
    };
    command.unwrap_or(Command::Unknown(line))
}

fn is_one_word(text: &str) -> bool {
    !text.is_empty() && !text.contains(char::is_whitespace)
}

/// The text of `stream`'s chunk number `index` (from 1), sent at
/// `sent_us` microseconds since the Unix epoch:
/// `stream 7 t=1700000000123456` and a newline, so that the chunks of a
/// turn read as one line each, and a client on the same clock can tell how
/// long the chunk took to reach it.
pub(crate) fn stream_chunk(index: u64, sent_us: u128) -> String {
    format!("stream {index} t={sent_us}\n")
}

/// Cut `text` into the chunks `say` streams: the text is split into words
/// (each word keeps the spaces that follow it), and the words are dealt into
/// `min(3, words)` consecutive chunks as evenly as possible, earlier chunks
/// taking the extra words. The chunks concatenate back to `text` exactly.
///
/// `"hello brave new world"` → `["hello brave ", "new ", "world"]`.
pub(crate) fn say_chunks(text: &str) -> Vec<&str> {
    // Word boundaries: after a run of spaces, before the next non-space.
    let mut starts = vec![0];
    let bytes = text.as_bytes();
    for i in 1..bytes.len() {
        if bytes[i - 1] == b' ' && bytes[i] != b' ' {
            starts.push(i);
        }
    }
    let words = starts.len();
    let chunk_count = words.min(3);
    let mut chunks = Vec::with_capacity(chunk_count);
    let mut word = 0;
    for chunk in 0..chunk_count {
        let take = words / chunk_count + usize::from(chunk < words % chunk_count);
        let start = starts[word];
        word += take;
        let end = starts.get(word).copied().unwrap_or(text.len());
        chunks.push(&text[start..end]);
    }
    chunks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_command() {
        let script = "say hello  world\n\
                      think hmm\n\
                      plan a; b ;; c\n\
                      run echo hi | wc -c\n\
                      write notes/a.txt two  words\n\
                      write empty.txt\n\
                      read a.txt\n\
                      wait\n\
                      sleep 250\n\
                      env API_KEY\n\
                      turn\n\
                      crash\n\
                      garbage\n\
                      stream 100000\n";
        assert_eq!(
            parse(script),
            vec![
                Command::Say("hello  world"),
                Command::Think("hmm"),
                Command::Plan(vec!["a", "b", "c"]),
                Command::Run("echo hi | wc -c"),
                Command::Write {
                    path: "notes/a.txt",
                    content: "two  words"
                },
                Command::Write {
                    path: "empty.txt",
                    content: ""
                },
                Command::Read("a.txt"),
                Command::Wait,
                Command::Sleep(Duration::from_millis(250)),
                Command::Env("API_KEY"),
                Command::Turn,
                Command::Crash,
                Command::Garbage,
                Command::Stream(100_000),
            ]
        );
    }

    #[test]
    fn trims_lines_and_skips_blank_ones() {
        assert_eq!(
            parse("\r\n   say  hi there  \r\n\n\t\n"),
            vec![Command::Say("hi there")]
        );
    }

    #[test]
    fn malformed_commands_are_unknown() {
        for line in [
            "hello",
            "Say hi",
            "say",
            "think",
            "plan",
            "plan ; ;",
            "run",
            "write",
            "read",
            "read a b",
            "wait now",
            "sleep",
            "sleep -1",
            "sleep 1.5",
            "env",
            "env A B",
            "turn 2",
            "crash now",
            "garbage please",
            "stream",
            "stream -1",
            "stream 1e5",
            "stream 10 20",
        ] {
            assert_eq!(parse(line), vec![Command::Unknown(line)], "{line}");
        }
    }

    #[test]
    fn say_chunks_split_at_word_boundaries_into_at_most_three() {
        assert_eq!(
            say_chunks("hello brave new world"),
            ["hello brave ", "new ", "world"]
        );
        assert_eq!(say_chunks("one two three"), ["one ", "two ", "three"]);
        assert_eq!(say_chunks("a b"), ["a ", "b"]);
        assert_eq!(say_chunks("hi"), ["hi"]);
        assert_eq!(say_chunks("a  b"), ["a  ", "b"]);
        assert_eq!(say_chunks("1 2 3 4 5 6 7"), ["1 2 3 ", "4 5 ", "6 7"]);
        assert_eq!(
            say_chunks("héllo wörld ünïcode"),
            ["héllo ", "wörld ", "ünïcode"]
        );
    }

    #[test]
    fn stream_chunks_carry_index_and_time() {
        assert_eq!(
            stream_chunk(7, 1_700_000_000_123_456),
            "stream 7 t=1700000000123456\n"
        );
    }

    #[test]
    fn say_chunks_concatenate_to_the_text() {
        for text in ["x", "still here", "a  b   c d e f g h i j", "ünï cödé ok"] {
            assert_eq!(say_chunks(text).concat(), text);
        }
    }
}
