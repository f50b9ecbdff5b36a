//! `cargo xtask …`: project chores that are not part of the library or CLI.

use anyhow::{bail, Result};

const USAGE: &str = "usage: cargo xtask <task>

tasks:
  fixtures   print how to regenerate the PyTorch parity fixtures";

fn main() -> Result<()> {
    let task = std::env::args().nth(1);
    match task.as_deref() {
        Some("fixtures") => {
            println!(
                "The parity fixtures are made with PyTorch, by hand, outside CI:\n\
                 python3 -m venv /somewhere/outside/the/repo && /somewhere/.../bin/pip install torch transformers diffusers safetensors pillow numpy\n\
                 /somewhere/.../bin/python tests/fixtures/make_fixtures.py"
            );
            Ok(())
        }
        Some(other) => bail!("unknown task `{other}`\n\n{USAGE}"),
        None => {
            println!("{USAGE}");
            Ok(())
        }
    }
}
