use std::io::{self, BufRead, IsTerminal, Write};
use std::process::ExitCode;

use tokenctl::cli::{self, ClosedPipeOk, Env, Io, Terminal};

fn main() -> ExitCode {
    // A panic's message may quote what the code was handling (a sink's
    // secret, say): it is masked like everything else tokenctl prints.
    std::panic::set_hook(Box::new(|info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        let place = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let thread = std::thread::current();
        let name = thread.name().unwrap_or("unnamed");
        let text = format!("thread '{name}' panicked{place}: {message}");
        let _ = writeln!(io::stderr(), "{}", tokenctl::redact::redact(&text));
    }));
    let env = Env::from_process();
    let stdin = io::stdin();
    let terminal = Terminal {
        stdin: stdin.is_terminal(),
        stdout: io::stdout().is_terminal(),
        stderr: io::stderr().is_terminal(),
    };
    let mut read_line = || {
        let mut line = String::new();
        stdin.lock().read_line(&mut line).map(|_| line)
    };
    let mut stdout = ClosedPipeOk::new(io::stdout().lock());
    // Not locked for the whole run: the progress bar's thread writes to
    // stderr too, and would wait forever for a lock this thread holds.
    let mut stderr = ClosedPipeOk::new(io::stderr());
    let mut io = Io {
        stdout: &mut stdout,
        stderr: &mut stderr,
        terminal,
        read_line: &mut read_line,
    };
    let code = cli::run(std::env::args_os(), &env, &mut io);
    ExitCode::from(code.code())
}
