//! The kernel command line, split as the kernel splits it (lib/cmdline.c:
//! `next_arg`): parameters are separated by spaces, double quotes group
//! spaces and are removed, the first `=` separates name and value, and
//! everything after a bare `--` is for init.

use nom::branch::alt;
use nom::bytes::complete::{is_not, take_while, take_while1};
use nom::character::complete::char;
use nom::combinator::{map, opt};
use nom::multi::many1;
use nom::sequence::{delimited, preceded};
use nom::{IResult, Parser};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cmdline {
    /// Parameters in order, `None` for a parameter without `=`.
    pub params: Vec<(String, Option<String>)>,
    /// Arguments after `--`.
    pub init_args: Vec<String>,
}

fn is_space(c: char) -> bool {
    c.is_ascii_whitespace()
}

/// One parameter: unquoted runs and quoted runs (an unterminated quote runs
/// to the end of the line, as in the kernel).
fn token(input: &str) -> IResult<&str, String> {
    map(
        many1(alt((
            preceded(
                char('"'),
                map((opt(is_not("\"")), opt(char('"'))), |(s, _)| {
                    s.unwrap_or("")
                }),
            ),
            take_while1(|c: char| !is_space(c) && c != '"'),
        ))),
        |parts: Vec<&str>| parts.concat(),
    )
    .parse(input)
}

fn spaces(input: &str) -> IResult<&str, &str> {
    take_while(is_space)(input)
}

impl Cmdline {
    pub fn parse(text: &str) -> Cmdline {
        let mut out = Cmdline::default();
        let mut rest = text;
        let mut after_dashes = false;
        loop {
            let Ok((r, tok)) = delimited(spaces, token, spaces).parse(rest) else {
                break;
            };
            rest = r;
            if after_dashes {
                out.init_args.push(tok);
            } else if tok == "--" {
                after_dashes = true;
            } else {
                match tok.split_once('=') {
                    Some((k, v)) => out.params.push((k.to_string(), Some(v.to_string()))),
                    None => out.params.push((tok, None)),
                }
            }
        }
        out
    }

    /// The last value given for `name` (later parameters override earlier).
    pub fn value(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| v.as_deref())
    }

    /// A boolean switch: present without value, or with a value other than
    /// 0/no/false/off.
    pub fn flag(&self, name: &str) -> bool {
        match self.params.iter().rev().find(|(k, _)| k == name) {
            None => false,
            Some((_, None)) => true,
            Some((_, Some(v))) => !matches!(v.as_str(), "0" | "no" | "false" | "off"),
        }
    }

    /// Parses the command line as the kernel hands it over: bytes. The
    /// kernel does not require UTF-8 (a bootloader entry may carry Latin-1),
    /// and one stray byte must not stop the boot: invalid sequences become
    /// U+FFFD and the other parameters are read as usual.
    pub fn parse_bytes(bytes: &[u8]) -> Cmdline {
        Cmdline::parse(&String::from_utf8_lossy(bytes))
    }
}

pub fn read() -> std::io::Result<Cmdline> {
    Ok(Cmdline::parse_bytes(&std::fs::read("/proc/cmdline")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(k: &str, v: Option<&str>) -> (String, Option<String>) {
        (k.to_string(), v.map(str::to_string))
    }

    #[test]
    fn splits_plain_parameters() {
        let c = Cmdline::parse("BOOT_IMAGE=(loop0)/boot/vmlinuz ro  quiet\tpanic=5\n");
        assert_eq!(
            c.params,
            vec![
                p("BOOT_IMAGE", Some("(loop0)/boot/vmlinuz")),
                p("ro", None),
                p("quiet", None),
                p("panic", Some("5"))
            ]
        );
    }

    #[test]
    fn quotes_group_spaces_and_are_removed() {
        let c = Cmdline::parse(r#"a="x y" "b=c d" e=f"g h"i"#);
        assert_eq!(
            c.params,
            vec![
                p("a", Some("x y")),
                p("b", Some("c d")),
                p("e", Some("fg hi"))
            ]
        );
    }

    #[test]
    fn first_equals_splits() {
        let c = Cmdline::parse("root=LABEL=COS_STATE cos-img/filename=/cOS/a.img");
        assert_eq!(c.value("root"), Some("LABEL=COS_STATE"));
        assert_eq!(c.value("cos-img/filename"), Some("/cOS/a.img"));
    }

    #[test]
    fn unterminated_quote_runs_to_end() {
        let c = Cmdline::parse(r#"x="a b c"#);
        assert_eq!(c.value("x"), Some("a b c"));
    }

    #[test]
    fn double_dash_passes_the_rest_to_init() {
        let c = Cmdline::parse("quiet -- single --foo=bar");
        assert_eq!(c.params, vec![p("quiet", None)]);
        assert_eq!(c.init_args, ["single", "--foo=bar"]);
    }

    #[test]
    fn last_value_wins_and_flags() {
        let c =
            Cmdline::parse("immuboot.mode=active immuboot.mode=passive rd.cos.disable x=0 y=yes");
        assert_eq!(c.value("immuboot.mode"), Some("passive"));
        assert!(c.flag("rd.cos.disable"));
        assert!(!c.flag("x"));
        assert!(c.flag("y"));
        assert!(!c.flag("absent"));
    }

    #[test]
    fn empty_and_blank_lines() {
        assert_eq!(Cmdline::parse(""), Cmdline::default());
        assert_eq!(Cmdline::parse("   \n"), Cmdline::default());
        assert_eq!(Cmdline::parse("a= b").value("a"), Some(""));
    }

    /// /proc/cmdline was read as a string, so one non-UTF-8 byte (written by
    /// a bootloader entry, not by us) made reading it fail, and the boot with it.
    #[test]
    fn non_utf8_bytes_do_not_stop_the_parse() {
        let c = Cmdline::parse_bytes(b"root=LABEL=caf\xe9 immuboot.verify=always quiet\n");
        assert_eq!(c.value("root"), Some("LABEL=caf\u{fffd}"));
        assert_eq!(c.value("immuboot.verify"), Some("always"));
        assert!(c.flag("quiet"));
    }
}
