//! The command step: runs a program with the run's data in its arguments and
//! environment, streams its output to the log, keeps the end of it in the run
//! record (secrets masked), and sorts its exit code into ok, retry, reject or fail.
//! The program runs in its own process group, killed with everything it started
//! when the attempt times out, the run is cancelled or flowgate stops.

pub mod config;
pub mod plan;
pub(crate) mod staged;

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};

use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};
use tokio::process::Command;

use crate::error::{ErrorClass, ErrorKind, StepError};
use crate::secret::redact;
use crate::state::StepReport;
use crate::steps::context::{StepContext, StepOutput};
use plan::{CommandPlan, Program};

/// Characters of stderr's end quoted in the error of a failed command.
const REASON_CHARS: usize = 2000;

/// What a program started with `inherit_env = false` still gets of flowgate's
/// environment.
const KEPT_ENV: [&str; 4] = ["PATH", "HOME", "LANG", "TZ"];

/// Longest piece of output read (and logged) as one line.
const MAX_LINE: u64 = 64 * 1024;

pub async fn run(ctx: &StepContext<'_>, plan: &CommandPlan) -> Result<StepOutput, StepError> {
    let (work, env) = staged::Work::prepare(ctx, plan).await?;
    let env: Vec<(&str, String)> = env.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    let mut out = execute(ctx, plan, ctx.template, &env).await?;
    if let (Some(work), None) = (&work, &out.failure) {
        let (objects, bytes) = work.upload(ctx, plan).await?;
        out.report.objects_out += objects;
        out.report.bytes_out += bytes;
    }
    Ok(out)
}

/// Run the program of `plan` with its templates rendered from `template` and
/// `extra` added to its environment (another step kind running a command).
pub(crate) async fn execute(
    ctx: &StepContext<'_>,
    plan: &CommandPlan,
    template: &serde_json::Value,
    extra: &[(&str, String)],
) -> Result<StepOutput, StepError> {
    let render = |t: &str| {
        crate::template::render(t, template)
            .map_err(|e| StepError::user(format!("step `{}`: {e}", ctx.step.id)))
    };
    let dir = match &plan.dir {
        Some(d) => inside(ctx, d, &render(d)?, "working directory")?,
        None => ctx.plan.code_root().to_path_buf(),
    };
    // Absolute: a relative program path would otherwise be resolved after the
    // child changed into `dir`.
    let dir = std::path::absolute(&dir).unwrap_or(dir);
    let mut env = outside_env(ctx, plan, &render).await?;
    for (k, v) in &plan.env {
        env.push((k.clone(), render(v)?));
    }
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.clone())));
    env.extend([
        ("FLOWGATE_PIPELINE".to_string(), ctx.plan.name.clone()),
        ("FLOWGATE_RUN_ID".to_string(), ctx.run_id.to_string()),
        ("FLOWGATE_STEP".to_string(), ctx.step.id.clone()),
    ]);
    if let Some(setup) = &plan.setup {
        self::setup(ctx, plan, setup, &dir, &env).await?;
    }
    let (program, args, shown) = match &plan.program {
        Program::Argv(argv) => {
            let argv = argv.iter().map(|a| render(a)).collect::<Result<Vec<_>, _>>()?;
            (program_path(&argv[0], &dir), argv[1..].to_vec(), argv[0].clone())
        }
        Program::Shell(line) => (PathBuf::from("sh"), vec!["-c".to_string(), render(line)?], "sh -c …".to_string()),
    };
    let mut cmd = command(&program, &args, &dir, plan.inherit_env, &env);
    let child = cmd.spawn().map_err(|e| spawn_error(&shown, &dir, &e))?;
    let (status, stdout, stderr) = supervise(ctx, child, plan.keep_output).await?;
    judge(plan, &shown, status, stdout, stderr)
}

/// A child process: in `dir`, in its own process group, killed when dropped,
/// with `env` (and of flowgate's own environment only a few variables unless
/// `inherit`), its output piped.
fn command(program: &Path, args: &[String], dir: &Path, inherit: bool, env: &[(String, String)]) -> Command {
    let mut cmd = Command::new(program);
    cmd.args(args);
    if !inherit {
        cmd.env_clear();
        for k in KEPT_ENV {
            if let Some(v) = std::env::var_os(k) {
                cmd.env(k, v);
            }
        }
    }
    cmd.envs(env.iter().map(|(k, v)| (k, v)))
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    #[cfg(unix)]
    cmd.process_group(0);
    cmd
}

/// The end of `stderr` (at most `REASON_CHARS` bytes, on a character boundary)
/// as a failure's reason.
fn reason(stderr: &str) -> String {
    let start = stderr.len().saturating_sub(REASON_CHARS);
    let start = (start..=stderr.len())
        .find(|i| stderr.is_char_boundary(*i))
        .unwrap_or(stderr.len());
    match stderr[start..].trim() {
        "" => String::from("(nothing on stderr)"),
        s => s.to_string(),
    }
}

/// The file in a step's directory that holds the hash of its last good setup.
const SETUP_MARK: &str = ".flowgate-setup";

/// Run the setup unless the hash of its command and key files is the one its
/// last success left.
async fn setup(
    ctx: &StepContext<'_>,
    plan: &CommandPlan,
    setup: &config::SetupSpec,
    dir: &Path,
    env: &[(String, String)],
) -> Result<(), StepError> {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    for a in &setup.argv {
        h.update(a.as_bytes());
        h.update([0]);
    }
    for k in &setup.key {
        let body = std::fs::read(dir.join(k)).map_err(|e| {
            StepError::user(format!("step `{}`: setup key file {k}: {e}", ctx.step.id))
        })?;
        h.update(k.as_bytes());
        h.update([0]);
        h.update(sha2::Sha256::digest(&body));
    }
    let hash = hex::encode(h.finalize());
    let mark = dir.join(SETUP_MARK);
    if std::fs::read_to_string(&mark).is_ok_and(|m| m.trim() == hash) {
        tracing::info!(step = %ctx.step.id, "setup is current (its key files did not change)");
        return Ok(());
    }
    let program = program_path(&setup.argv[0], dir);
    let child = command(&program, &setup.argv[1..], dir, plan.inherit_env, env)
        .spawn()
        .map_err(|e| spawn_error(&setup.argv[0], dir, &e))?;
    let (status, _, (stderr, _)) = supervise(ctx, child, plan.keep_output).await?;
    if !status.success() {
        return Err(StepError::new(
            crate::error::ErrorClass::EXTERNAL_FATAL,
            format!("step `{}`: setup `{}` failed ({status}): {}", ctx.step.id, setup.argv[0], reason(&stderr)),
        ));
    }
    std::fs::write(&mark, &hash).map_err(crate::store::io_error)?;
    Ok(())
}

/// `rendered` (from template `t`) as a path in the pipeline's folder (its kept
/// files, for a rerun): one named by run data (a parameter, a routing row) may
/// not leave it.
fn inside(ctx: &StepContext<'_>, t: &str, rendered: &str, what: &str) -> Result<PathBuf, StepError> {
    let escapes = Path::new(rendered)
        .components()
        .any(|c| !matches!(c, std::path::Component::Normal(_) | std::path::Component::CurDir));
    if t.contains("{{") && escapes {
        return Err(StepError::user(format!(
            "step `{}`: the {what} `{rendered}` leaves the pipeline's folder (a `..` or an absolute path came from the run's data)",
            ctx.step.id
        )));
    }
    Ok(ctx.plan.code_root().join(rendered))
}

/// The variables of `env_file` and of `secrets`, in that order (secrets win).
async fn outside_env(
    ctx: &StepContext<'_>,
    plan: &CommandPlan,
    render: &impl Fn(&str) -> Result<String, StepError>,
) -> Result<Vec<(String, String)>, StepError> {
    let mut vars = Vec::new();
    if let Some(t) = &plan.env_file {
        let path = inside(ctx, t, &render(t)?, "env_file")?;
        let iter = dotenvy::from_path_iter(&path)
            .map_err(|e| StepError::user(format!("step `{}`: env_file {}: {e}", ctx.step.id, path.display())))?;
        for item in iter {
            let (k, v) = item.map_err(|e| StepError::user(format!("step `{}`: env_file {}: {e}", ctx.step.id, path.display())))?;
            if crate::secret::name_looks_secret(&k) {
                crate::secret::register(&v);
            }
            vars.push((k, v));
        }
    }
    #[cfg(feature = "aws")]
    if let Some(name) = &plan.secrets {
        let role = plan.role_arn.as_deref().map(render).transpose()?.filter(|r| !r.trim().is_empty());
        vars.extend(crate::secrets_manager::fetch(render(name)?.trim(), role.as_deref()).await?);
    }
    Ok(vars)
}

/// A program named with a `/` is relative to the working directory; a bare name
/// is looked up on `PATH`.
fn program_path(program: &str, dir: &Path) -> PathBuf {
    let p = Path::new(program);
    if program.contains('/') && p.is_relative() {
        dir.join(p)
    } else {
        p.to_path_buf()
    }
}

fn spawn_error(program: &str, dir: &Path, e: &std::io::Error) -> StepError {
    let hint = match e.kind() {
        std::io::ErrorKind::NotFound => {
            " (no such program, or no such working directory: a name without `/` is looked up on PATH, one with `/` in the working directory)"
        }
        std::io::ErrorKind::PermissionDenied => " (is it executable? chmod +x)",
        _ => "",
    };
    StepError::user(format!(
        "cannot start `{program}` in {}: {e}{hint}",
        dir.display()
    ))
}

/// The end of one output stream, within a byte budget, secrets masked.
struct Tail {
    keep: usize,
    text: String,
    dropped: bool,
}

impl Tail {
    fn push(&mut self, line: &str) {
        self.text.push_str(line);
        self.text.push('\n');
        if self.text.len() > self.keep.saturating_mul(2).max(4096) {
            self.trim();
        }
    }

    fn trim(&mut self) {
        if self.text.len() > self.keep {
            let mut cut = self.text.len() - self.keep;
            while !self.text.is_char_boundary(cut) {
                cut += 1;
            }
            self.text.drain(..cut);
            self.dropped = true;
        }
    }

    fn finish(mut self) -> (String, bool) {
        self.trim();
        (self.text, self.dropped)
    }
}

/// Read a stream line by line to the log and into its tail.
async fn follow(
    stream: impl AsyncRead + Unpin,
    step: &str,
    name: &'static str,
    keep: usize,
) -> (String, bool) {
    let mut tail = Tail {
        keep,
        text: String::new(),
        dropped: false,
    };
    let mut reader = BufReader::new(stream);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        // A "line" without a newline (binary output) is cut into pieces of
        // at most MAX_LINE bytes: memory stays bounded whatever the program prints.
        match (&mut reader).take(MAX_LINE).read_until(b'\n', &mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                let raw = String::from_utf8_lossy(&buf);
                let line = redact(raw.trim_end_matches(['\n', '\r']));
                tracing::info!(step, stream = name, "{line}");
                tail.push(&line);
            }
        }
    }
    tail.finish()
}

type Captured = (String, bool);

/// Wait for the child while following its output; on cancellation kill its
/// whole process group.
async fn supervise(
    ctx: &StepContext<'_>,
    mut child: tokio::process::Child,
    keep: usize,
) -> Result<(ExitStatus, Captured, Captured), StepError> {
    let group = Group(child.id());
    let (Some(out), Some(err)) = (child.stdout.take(), child.stderr.take()) else {
        return Err(StepError::internal("the command's output pipes are missing"));
    };
    let step = ctx.step.id.as_str();
    let work = async {
        let (stdout, stderr) = tokio::join!(
            follow(out, step, "stdout", keep),
            follow(err, step, "stderr", keep)
        );
        let status = child.wait().await;
        (status, stdout, stderr)
    };
    let (status, stdout, stderr) = tokio::select! {
        r = work => r,
        _ = ctx.cancel.cancelled() => {
            return Err(StepError::external("the run was cancelled; the command and its children were killed"));
        }
    };
    group.reaped();
    let status = status.map_err(|e| StepError::external(format!("waiting for the command: {e}")))?;
    Ok((status, stdout, stderr))
}

/// The child's process group: killed with everything in it unless the child was
/// reaped first (a timeout or a cancellation drops the attempt mid-way).
struct Group(Option<u32>);

impl Group {
    fn reaped(mut self) {
        self.0 = None;
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        #[cfg(unix)]
        if let Some(pid) = self.0.and_then(|p| libc::pid_t::try_from(p).ok()) {
            // SAFETY: killpg only sends a signal; the group is the child's own
            // (process_group(0)), which is not reaped yet, so its id is not reused.
            unsafe {
                libc::killpg(pid, libc::SIGKILL);
            }
        }
    }
}

/// The exit status sorted into what the file says it means.
fn judge(
    plan: &CommandPlan,
    program: &str,
    status: ExitStatus,
    (stdout, stdout_cut): Captured,
    (stderr, stderr_cut): Captured,
) -> Result<StepOutput, StepError> {
    let code = status.code();
    let output = json!({
        "exit_code": code,
        "stdout": stdout,
        "stderr": stderr,
        "stdout_truncated": stdout_cut,
        "stderr_truncated": stderr_cut,
    });
    let report = StepReport {
        output: Some(output),
        ..Default::default()
    };
    let Some(code) = code else {
        let failure = StepError::new(
            ErrorClass::EXTERNAL_FATAL,
            format!("`{program}` was killed by a signal ({status}): {}", reason(&stderr)),
        );
        return Ok(StepOutput {
            report,
            failure: Some(failure),
        });
    };
    if plan.ok.contains(&code) {
        return Ok(report.into());
    }
    if plan.retry.contains(&code) {
        return Err(StepError::external(format!(
            "`{program}` exited with {code} (retry): {}",
            reason(&stderr)
        )));
    }
    let failure = if plan.reject_others || plan.reject.contains(&code) {
        StepError::new(
            ErrorClass::USER,
            format!("`{program}` rejected its input (exit {code}): {}", reason(&stderr)),
        )
        .with_kind(ErrorKind::Rejected)
    } else {
        StepError::new(
            ErrorClass::EXTERNAL_FATAL,
            format!("`{program}` failed (exit {code}): {}", reason(&stderr)),
        )
    };
    Ok(StepOutput {
        report,
        failure: Some(failure),
    })
}

#[cfg(test)]
mod tests {
    use super::Tail;

    #[test]
    fn a_tail_keeps_the_end_within_its_budget_on_a_char_boundary() {
        let mut t = Tail {
            keep: 10,
            text: String::new(),
            dropped: false,
        };
        for i in 0..2000 {
            t.push(&format!("é line {i}"));
        }
        let (text, dropped) = t.finish();
        assert!(dropped);
        assert!(text.len() <= 10, "{text:?}");
        assert!(text.ends_with("1999\n"), "{text:?}");
    }
}
