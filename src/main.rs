use std::io::{self, BufRead, IsTerminal};
use std::process::ExitCode;

use tokenctl::cli::{self, ClosedPipeOk, Env, Io, Terminal};

fn main() -> ExitCode {
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
