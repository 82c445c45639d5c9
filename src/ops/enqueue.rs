//! `enqueue [FILE|-]`: jobs from JSON lines.
//!
//! Two passes, so that every line is validated before anything is
//! published: the first reads and validates every line (reporting bad ones
//! by line number), the second reads the input again and publishes the
//! valid lines. A regular file is simply read twice; stdin (or a pipe) is
//! spooled to an unlinked temporary file during the first pass. Memory
//! stays flat either way: one line at a time, and a line longer than the
//! job size limit is skipped over without being held.

use super::publish::JobPublisher;
use super::validate::{Rules, validate_job};
use super::{EXIT_INVALID, EXIT_UNCONFIRMED, Exit, Progress};
use crate::broker;
use crate::config::Config;
use anyhow::Context as _;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, Write};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, clap::Args)]
pub struct EnqueueArgs {
    /// JSON-lines file of jobs, one per line; `-` or nothing reads standard input.
    #[arg(conflicts_with = "s3_prefix")]
    pub file: Option<PathBuf>,
    /// Instead of a file: one job per object under s3://bucket/prefix.
    #[arg(long, value_name = "S3_URI")]
    pub s3_prefix: Option<String>,
    /// With --s3-prefix: the check every job asks for.
    #[arg(long, requires = "s3_prefix", value_parser = ["document", "face"])]
    pub check: Option<String>,
    /// With --s3-prefix: the vendor every job names (default: configured per check).
    #[arg(long, requires = "s3_prefix", value_parser = ["argos", "intellicheck", "didit"])]
    pub provider: Option<String>,
    /// With --s3-prefix: a JSON object set as every job's metadata.
    #[arg(long, requires = "s3_prefix", value_name = "JSON")]
    pub metadata: Option<String>,
    /// Validate (or list) only; publish nothing. With --s3-prefix the jobs are
    /// printed to stdout as JSON lines.
    #[arg(long)]
    pub dry_run: bool,
    /// Publish nothing at all when any line is invalid.
    #[arg(long, conflicts_with = "s3_prefix")]
    pub strict: bool,
    /// Publishes in flight awaiting their confirm.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u16).range(1..))]
    pub window: u16,
}

/// Bad lines kept in a report (all of them are printed as found).
const KEPT_INVALID: usize = 1000;

/// What an enqueue from lines did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LinesReport {
    pub lines: u64,
    pub blank: u64,
    pub valid: u64,
    pub invalid: u64,
    /// The first bad lines: (line number, reason).
    pub invalid_lines: Vec<(u64, String)>,
    pub published: u64,
    pub unconfirmed: u64,
}

impl LinesReport {
    pub fn exit_code(&self) -> u8 {
        if self.unconfirmed > 0 {
            EXIT_UNCONFIRMED
        } else if self.invalid > 0 {
            EXIT_INVALID
        } else {
            0
        }
    }
}

/// Where lines come from.
#[derive(Debug, Clone)]
pub enum Input {
    Stdin,
    File(PathBuf),
}

impl Input {
    pub fn from_arg(file: Option<PathBuf>) -> Input {
        match file {
            Some(p) if p.as_os_str() != "-" => Input::File(p),
            _ => Input::Stdin,
        }
    }
}

/// One line of input, without its line ending.
#[derive(Debug, PartialEq, Eq)]
enum Line {
    Blank,
    /// Longer than the limit: its content was skipped, not kept.
    TooLong(u64),
    Text,
}

/// Reads one line into `buf` (without `\n` or `\r\n`), keeping at most
/// `limit` bytes of it; None at end of input.
fn read_line_bounded(
    r: &mut impl BufRead,
    buf: &mut Vec<u8>,
    limit: usize,
) -> std::io::Result<Option<Line>> {
    buf.clear();
    let mut total: u64 = 0;
    let mut last = None;
    let mut saw_any = false;
    loop {
        let chunk = r.fill_buf()?;
        if chunk.is_empty() {
            break;
        }
        saw_any = true;
        let (part, done) = match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => (&chunk[..i], true),
            None => (chunk, false),
        };
        total += part.len() as u64;
        if let Some(&b) = part.last() {
            last = Some(b);
        }
        // Up to one byte over the limit is kept: room for a trailing '\r'.
        let room = (limit + 1).saturating_sub(buf.len());
        buf.extend_from_slice(&part[..part.len().min(room)]);
        let used = part.len() + usize::from(done);
        r.consume(used);
        if done {
            break;
        }
    }
    if !saw_any {
        return Ok(None);
    }
    if last == Some(b'\r') {
        total -= 1;
        buf.truncate(buf.len().min(total as usize));
    }
    Ok(Some(if total as usize > limit {
        buf.clear();
        Line::TooLong(total)
    } else if buf.iter().all(u8::is_ascii_whitespace) {
        Line::Blank
    } else {
        Line::Text
    }))
}

/// The reason for a line over the job size limit, in the worker's words.
fn too_long_reason(len: u64, limit: usize) -> String {
    format!("job body is {len} bytes, over the {limit}-byte limit; it was not parsed")
}

/// A stdin spool: created and unlinked at once, so it disappears with the
/// process whatever happens.
fn spool_file() -> anyhow::Result<File> {
    let dir = std::env::temp_dir();
    for _ in 0..16 {
        let path = dir.join(format!("liveness-enqueue-{:016x}", fastrand::u64(..)));
        match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(f) => {
                std::fs::remove_file(&path).ok();
                return Ok(f);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => {
                return Err(e).with_context(|| {
                    format!("cannot create a spool file for stdin in {}", dir.display())
                });
            }
        }
    }
    anyhow::bail!("cannot create a spool file for stdin in {}", dir.display())
}

/// (length, modification time) of a file, to notice it changing between passes.
fn fingerprint(path: &Path) -> anyhow::Result<(u64, Option<std::time::SystemTime>)> {
    let m = std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok((m.len(), m.modified().ok()))
}

/// Pass 1: validates every line, printing each bad one; copies the input to
/// `spool` when given (bad lines over the size limit are spooled empty).
fn validate_pass(
    input: impl Read,
    mut spool: Option<&mut std::io::BufWriter<&mut File>>,
    rules: &Rules,
    report: &mut LinesReport,
) -> anyhow::Result<()> {
    let mut r = BufReader::with_capacity(256 * 1024, input);
    let mut buf = Vec::new();
    let mut progress = Progress::new("validating", None);
    while let Some(line) =
        read_line_bounded(&mut r, &mut buf, rules.max_job_bytes).context("cannot read the input")?
    {
        report.lines += 1;
        let n = report.lines;
        if let Some(s) = spool.as_mut() {
            s.write_all(&buf)
                .and_then(|_| s.write_all(b"\n"))
                .context("cannot write the stdin spool file")?;
        }
        let verdict = match line {
            Line::Blank => {
                report.blank += 1;
                continue;
            }
            Line::TooLong(len) => Err(too_long_reason(len, rules.max_job_bytes)),
            Line::Text => validate_job(&buf, rules).map(|_| ()),
        };
        match verdict {
            Ok(()) => report.valid += 1,
            Err(reason) => {
                report.invalid += 1;
                progress.println(&format!("line {n}: {reason}"));
                if report.invalid_lines.len() < KEPT_INVALID {
                    report.invalid_lines.push((n, reason));
                }
            }
        }
        progress.inc(1);
    }
    progress.finish();
    if let Some(s) = spool {
        s.flush().context("cannot write the stdin spool file")?;
    }
    Ok(())
}

/// Validates every line of `input`, then (unless `dry_run`, or `strict` with
/// bad lines) publishes the valid ones. Bad lines and failed publishes are
/// printed on stderr as they are found.
pub async fn enqueue_lines(
    cfg: &Config,
    input: Input,
    dry_run: bool,
    strict: bool,
    window: usize,
) -> anyhow::Result<LinesReport> {
    let rules = Rules::from_config(cfg);
    let mut report = LinesReport::default();

    // Pass 1. `reread` yields the same lines again for pass 2.
    let (mut reread, before): (Box<dyn Read + Send>, _) = match &input {
        Input::File(path) if std::fs::metadata(path).is_ok_and(|m| m.is_file()) => {
            let f = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
            let before = fingerprint(path)?;
            validate_pass(f, None, &rules, &mut report)?;
            let again =
                File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
            (Box::new(again), Some((path.clone(), before)))
        }
        other => {
            let mut spool = spool_file()?;
            {
                let mut w = std::io::BufWriter::new(&mut spool);
                match other {
                    Input::File(path) => {
                        let f = File::open(path)
                            .with_context(|| format!("cannot open {}", path.display()))?;
                        validate_pass(f, Some(&mut w), &rules, &mut report)?;
                    }
                    Input::Stdin => {
                        if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
                            eprintln!("enqueue: reading jobs from the terminal; end with Ctrl-D");
                        }
                        validate_pass(std::io::stdin().lock(), Some(&mut w), &rules, &mut report)?
                    }
                }
            }
            spool
                .rewind()
                .context("cannot rewind the stdin spool file")?;
            (Box::new(spool), None)
        }
    };

    if dry_run || report.valid == 0 || (strict && report.invalid > 0) {
        return Ok(report);
    }

    // Pass 2.
    let conn = broker::connect(&cfg.broker).await?;
    let progress = Progress::new("publishing", Some(report.valid));
    let mut publisher = JobPublisher::open(&conn, cfg, window, progress).await?;
    let mut r = BufReader::with_capacity(256 * 1024, &mut reread);
    let mut buf = Vec::new();
    let (mut n, mut sent) = (0u64, 0u64);
    while let Some(line) =
        read_line_bounded(&mut r, &mut buf, rules.max_job_bytes).context("cannot read the input")?
    {
        n += 1;
        if line != Line::Text {
            continue;
        }
        let Ok(job) = validate_job(&buf, &rules) else {
            continue;
        };
        if !publisher.usable() {
            break;
        }
        publisher
            .send(
                format!("line {n} (job {})", job.job_id),
                job.job_id.as_str(),
                &buf,
            )
            .await;
        sent += 1;
    }
    let (published, unconfirmed) = publisher.finish().await;
    report.published = published;
    // Lines never sent because the channel failed count as not published too.
    report.unconfirmed = unconfirmed + report.valid.saturating_sub(sent);
    let _ = conn.close(200, "enqueue done".into()).await;

    if let Some((path, before)) = before
        && fingerprint(&path)? != before
    {
        anyhow::bail!(
            "{} changed while enqueue was reading it: {} jobs were published from it; check the file and the jobs queue",
            path.display(),
            report.published
        );
    }
    Ok(report)
}

/// The `enqueue` command.
pub async fn run(cfg: &Config, args: EnqueueArgs) -> anyhow::Result<()> {
    if let Some(prefix) = &args.s3_prefix {
        let check = args
            .check
            .clone()
            .context("--check (document or face) is required with --s3-prefix")?;
        let backfill = super::backfill::BackfillArgs {
            check,
            provider: args.provider.clone(),
            metadata: args.metadata.clone(),
            dry_run: args.dry_run,
            window: args.window.into(),
        };
        return super::backfill::run(cfg, prefix, &backfill).await;
    }
    let input = Input::from_arg(args.file.clone());
    let report = enqueue_lines(cfg, input, args.dry_run, args.strict, args.window.into()).await?;
    eprintln!(
        "enqueue: {} lines read: {} valid, {} invalid, {} blank (skipped)",
        report.lines, report.valid, report.invalid, report.blank
    );
    if args.dry_run {
        eprintln!("enqueue: dry run, nothing published");
    } else if report.valid == 0 {
        eprintln!("enqueue: nothing to publish");
    } else if args.strict && report.invalid > 0 {
        eprintln!(
            "enqueue: --strict and {} invalid lines: nothing published",
            report.invalid
        );
    } else {
        eprintln!(
            "enqueue: {} published and confirmed, {} not published",
            report.published, report.unconfirmed
        );
        if report.unconfirmed > 0 {
            eprintln!(
                "enqueue: publishing the jobs not published again is safe: the worker verifies each job_id once"
            );
        }
    }
    match report.exit_code() {
        0 => Ok(()),
        code => Err(Exit(code).into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(input: &[u8], limit: usize) -> Vec<(Line, Vec<u8>)> {
        let mut r = BufReader::with_capacity(4, input);
        let mut buf = Vec::new();
        let mut out = Vec::new();
        while let Some(l) = read_line_bounded(&mut r, &mut buf, limit).unwrap() {
            out.push((l, buf.clone()));
        }
        out
    }

    #[test]
    fn lines_are_split_and_endings_dropped() {
        let got = lines(b"ab\r\n\n  \ncd", 10);
        assert_eq!(
            got,
            vec![
                (Line::Text, b"ab".to_vec()),
                (Line::Blank, vec![]),
                (Line::Blank, b"  ".to_vec()),
                (Line::Text, b"cd".to_vec()),
            ]
        );
        assert!(lines(b"", 10).is_empty());
    }

    #[test]
    fn long_lines_are_skipped_not_kept() {
        let mut input = vec![b'x'; 100];
        input.extend_from_slice(b"\nok\n");
        let got = lines(&input, 10);
        assert_eq!(got[0], (Line::TooLong(100), vec![]));
        assert_eq!(got[1], (Line::Text, b"ok".to_vec()));
        // Exactly at the limit, with a CRLF ending, is fine.
        assert_eq!(
            lines(b"0123456789\r\n", 10),
            vec![(Line::Text, b"0123456789".to_vec())]
        );
        assert_eq!(lines(b"0123456789A\r\n", 10)[0].0, Line::TooLong(11));
    }

    #[test]
    fn exit_codes() {
        let mut r = LinesReport::default();
        assert_eq!(r.exit_code(), 0);
        r.invalid = 1;
        assert_eq!(r.exit_code(), EXIT_INVALID);
        r.unconfirmed = 1;
        assert_eq!(r.exit_code(), EXIT_UNCONFIRMED);
    }
}
