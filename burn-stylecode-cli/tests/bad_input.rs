//! Every command against bad input: each case must exit non-zero with one
//! line naming the input at fault (file, key), no panic or backtrace, no
//! OS message said twice, and no file left in the output folder.

mod bad_files;

use bad_files::*;
use burn_stylecode_tests::copy_dir;
use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// What a case runs: its arguments and the texts its message must contain.
struct Run {
    args: Vec<OsString>,
    names: Vec<String>,
}

/// A case builds its inputs in `work` (its output folder is `work/out`).
type Setup = fn(&Path) -> Run;

fn run(args: &[&dyn AsRef<std::ffi::OsStr>], names: &[&dyn std::fmt::Display]) -> Run {
    Run {
        args: args.iter().map(|a| a.as_ref().to_os_string()).collect(),
        names: names.iter().map(|n| n.to_string()).collect(),
    }
}

/// A copy of the tiny weights folder at `work/weights`.
fn weights(work: &Path) -> PathBuf {
    let dir = work.join("weights");
    copy_dir(&fixtures().join("weights"), &dir);
    dir
}

fn out(work: &Path) -> PathBuf {
    work.join("out")
}

/// `encode` with the given weights folder.
fn encode_with(weights: &Path, names: &[&dyn std::fmt::Display]) -> Run {
    run(&[&"encode", &fixtures().join("images/photo.jpg"), &"--weights", &weights], names)
}

/// `generate` of one tiny image into `work/out`, with `extra` arguments.
fn generate(
    work: &Path,
    weights: &Path,
    extra: &[&dyn AsRef<std::ffi::OsStr>],
    names: &[&dyn std::fmt::Display],
) -> Run {
    let target = out(work).join("image.png");
    let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![&"generate", &"--prompt", &"a cat", &"--steps", &"1"];
    args.extend([&"--width" as &dyn AsRef<std::ffi::OsStr>, &"32", &"--height", &"32", &"--quiet"]);
    args.extend([&"--weights" as &dyn AsRef<std::ffi::OsStr>, &weights, &"--out", &target]);
    args.extend_from_slice(extra);
    run(&args, names)
}

/// The weights copy's SigLIP file, after `edit`.
fn broken_siglip(work: &Path, edit: impl FnOnce(&mut Vec<RawTensor>), duplicate: Option<&str>) -> (PathBuf, PathBuf) {
    let weights = weights(work);
    let file = weights.join("siglip/model.safetensors");
    edit_tensors(&file, edit, duplicate);
    (weights, file)
}

/// A file of `bytes` at `work/name`.
fn file(work: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = work.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

fn truncated_png(work: &Path) -> PathBuf {
    let png = std::fs::read(fixtures().join("images/drawing.png")).unwrap();
    file(work, "cut.png", &png[..png.len() / 3])
}

const TEXT: &[u8] = b"this is a text file, not an image or a checkpoint\n";

/// A name that is not UTF-8 (shown with U+FFFD).
fn non_utf8(work: &Path, stem: &[u8]) -> (PathBuf, String) {
    let name = OsString::from_vec([stem, b"-\xff.png"].concat());
    let path = work.join(&name);
    (path, name.to_string_lossy().into_owned())
}

const CASES: &[(&str, Setup)] = &[
    // --- images (encode, generate --style-image / --init-image) ---
    ("encode an empty file", |w| {
        let f = file(w, "empty.png", b"");
        run(&[&"encode", &f, &"--weights", &fixtures().join("weights")], &[&f.display()])
    }),
    ("encode a truncated PNG", |w| {
        let f = truncated_png(w);
        run(&[&"encode", &f, &"--weights", &fixtures().join("weights")], &[&f.display()])
    }),
    ("encode a text file named .png", |w| {
        let f = file(w, "text.png", TEXT);
        run(&[&"encode", &f, &"--weights", &fixtures().join("weights")], &[&f.display()])
    }),
    ("encode an image over the pixel limit", |w| {
        let f = file(w, "huge.png", &png_header(20_000, 20_000));
        run(&[&"encode", &f, &"--weights", &fixtures().join("weights")], &[&f.display(), &"20000"])
    }),
    ("encode a non-UTF-8 file name", |w| {
        let (f, shown) = non_utf8(w, b"text");
        std::fs::write(&f, TEXT).unwrap();
        run(&[&"encode", &f, &"--weights", &fixtures().join("weights")], &[&shown])
    }),
    ("encode a missing non-UTF-8 file name", |w| {
        let (f, shown) = non_utf8(w, b"absent");
        run(&[&"encode", &f, &"--weights", &fixtures().join("weights")], &[&shown])
    }),
    ("generate --style-image of a text file", |w| {
        let f = file(w, "style.png", TEXT);
        generate(w, &fixtures().join("weights"), &[&"--style-image", &f], &[&f.display()])
    }),
    ("generate --init-image of a truncated PNG", |w| {
        let f = truncated_png(w);
        generate(w, &fixtures().join("weights"), &[&"--init-image", &f], &[&f.display()])
    }),
    ("generate --init-image over the pixel limit", |w| {
        let f = file(w, "huge.png", &png_header(20_000, 20_000));
        generate(w, &fixtures().join("weights"), &[&"--init-image", &f], &[&f.display(), &"20000"])
    }),
    // --- weights files ---
    ("encode with NaN in a SigLIP tensor", |w| {
        let (weights, f) =
            broken_siglip(w, |t| tensor(t, SIGLIP_KEY).3[..4].copy_from_slice(&f32::NAN.to_le_bytes()), None);
        encode_with(&weights, &[&f.display(), &SIGLIP_KEY, &"NaN"])
    }),
    ("encode with an infinity in a SigLIP tensor", |w| {
        let (weights, f) =
            broken_siglip(w, |t| tensor(t, SIGLIP_KEY).3[4..8].copy_from_slice(&f32::NEG_INFINITY.to_le_bytes()), None);
        encode_with(&weights, &[&f.display(), &SIGLIP_KEY])
    }),
    ("encode with an int tensor where a float is expected", |w| {
        let (weights, f) = broken_siglip(w, |t| tensor(t, SIGLIP_KEY).1 = "I32", None);
        encode_with(&weights, &[&f.display(), &SIGLIP_KEY, &"I32"])
    }),
    ("encode with a tensor named twice in the header", |w| {
        let (weights, f) = broken_siglip(w, |_| {}, Some(SIGLIP_KEY));
        encode_with(&weights, &[&f.display(), &SIGLIP_KEY, &"twice"])
    }),
    ("encode with a tensor missing", |w| {
        let (weights, f) = broken_siglip(w, |t| t.retain(|t| t.0 != SIGLIP_OTHER_KEY), None);
        encode_with(&weights, &[&f.display(), &SIGLIP_OTHER_KEY, &"missing"])
    }),
    ("encode with a header length near u64::MAX", |w| {
        let weights = weights(w);
        let f = weights.join("siglip/model.safetensors");
        std::fs::write(&f, [(u64::MAX - 7).to_le_bytes().as_slice(), b"{}"].concat()).unwrap();
        encode_with(&weights, &[&f.display(), &"header length"])
    }),
    ("encode with an empty weights file", |w| {
        let weights = weights(w);
        let f = weights.join("siglip/model.safetensors");
        std::fs::write(&f, b"").unwrap();
        encode_with(&weights, &[&f.display()])
    }),
    ("encode with a truncated weights file", |w| {
        let weights = weights(w);
        let f = weights.join("siglip/model.safetensors");
        let bytes = std::fs::read(&f).unwrap();
        std::fs::write(&f, &bytes[..bytes.len() / 2]).unwrap();
        encode_with(&weights, &[&f.display(), &"truncated"])
    }),
    ("encode with a text file as weights", |w| {
        let weights = weights(w);
        let f = weights.join("siglip/model.safetensors");
        std::fs::write(&f, TEXT).unwrap();
        encode_with(&weights, &[&f.display()])
    }),
    ("generate with NaN in a UNet tensor", |w| {
        let weights = weights(w);
        let f = weights.join("sd15/unet/diffusion_pytorch_model.safetensors");
        edit_tensors(&f, |t| tensor(t, "conv_out.bias").3[..4].copy_from_slice(&f32::NAN.to_le_bytes()), None);
        generate(w, &weights, &[], &[&f.display(), &"conv_out.bias"])
    }),
    ("generate --lora of a text file", |w| {
        let f = file(w, "style.safetensors", TEXT);
        generate(w, &fixtures().join("weights"), &[&"--lora", &f], &[&f.display()])
    }),
    ("generate --lora of an empty file", |w| {
        let f = file(w, "empty.safetensors", b"");
        generate(w, &fixtures().join("weights"), &[&"--lora", &f], &[&f.display()])
    }),
    // --- a weights folder with a model missing ---
    ("encode with no weights folder", |w| {
        let missing = w.join("no-weights");
        encode_with(&missing, &[&missing.display(), &"--weights", &"cargo xtask import-weights"])
    }),
    ("encode with siglip missing", |w| {
        let weights = weights(w);
        std::fs::remove_dir_all(weights.join("siglip")).unwrap();
        encode_with(&weights, &[&"siglip", &weights.display(), &"--weights", &"import-weights --only siglip"])
    }),
    ("encode with stylecodes missing", |w| {
        let weights = weights(w);
        std::fs::remove_dir_all(weights.join("stylecodes")).unwrap();
        encode_with(&weights, &[&"stylecodes", &weights.display(), &"import-weights --only stylecodes"])
    }),
    ("generate with sd15's VAE missing", |w| {
        let weights = weights(w);
        std::fs::remove_dir_all(weights.join("sd15/vae")).unwrap();
        generate(w, &weights, &[], &[&"sd15", &weights.join("sd15/vae").display(), &"import-weights --only sd15"])
    }),
    ("generate with the default weights folder missing", |w| {
        // HOME points into `work`: the platform default is then absent.
        let mut run = generate(w, &w.join("unused"), &[], &[&"$STYLECODE_WEIGHTS", &"cargo xtask import-weights"]);
        let weights = run.args.iter().position(|a| a == "--weights").unwrap();
        run.args.drain(weights..weights + 2);
        run
    }),
    // --- outputs that cannot be written ---
    ("generate into a read-only folder", |w| {
        let target = w.join("read-only/image.png");
        let mut run = generate(w, &fixtures().join("weights"), &[], &[&target.display(), &read_only_reason()]);
        let at = run.args.iter().position(|a| a == "--out").unwrap();
        run.args[at + 1] = target.into();
        run
    }),
    ("generate into a missing folder", |w| {
        let target = out(w).join("absent/image.png");
        let mut run = generate(w, &fixtures().join("weights"), &[], &[&target.display(), &"No such file"]);
        let at = run.args.iter().position(|a| a == "--out").unwrap();
        run.args[at + 1] = target.into();
        run
    }),
    ("generate into a missing non-UTF-8 folder", |w| {
        let (dir, shown) = non_utf8(&out(w), b"folder");
        let target = dir.join("image.png");
        let mut run = generate(w, &fixtures().join("weights"), &[], &[&shown]);
        let at = run.args.iter().position(|a| a == "--out").unwrap();
        run.args[at + 1] = target.into();
        run
    }),
    ("merge-lora into a read-only folder", |w| {
        let target = w.join("read-only/merged");
        let base = fixtures().join("weights/sd15");
        let lora = fixtures().join("lora/kohya.safetensors");
        run(&[&"merge-lora", &"--base", &base, &"--lora", &lora, &"--out", &target], &[&w.join("read-only").display()])
    }),
    ("merge-lora of a LoRA with an overflowing header", |w| {
        let f = file(w, "lora.safetensors", &[(u64::MAX - 7).to_le_bytes().as_slice(), b"{}"].concat());
        let base = fixtures().join("weights/sd15");
        run(&[&"merge-lora", &"--base", &base, &"--lora", &f, &"--out", &out(w).join("merged")], &[&f.display()])
    }),
    ("merge-lora from a missing base", |w| {
        let base = w.join("no-sd15");
        let lora = fixtures().join("lora/kohya.safetensors");
        run(&[&"merge-lora", &"--base", &base, &"--lora", &lora, &"--out", &out(w).join("merged")], &[&base.display()])
    }),
    ("train with no manifest", |w| {
        let data = w.join("data");
        std::fs::create_dir_all(&data).unwrap();
        let weights = fixtures().join("weights");
        let args: [&dyn AsRef<std::ffi::OsStr>; 9] =
            [&"train", &"--data", &data, &"--out", &out(w).join("run"), &"--weights", &weights, &"--steps", &"1"];
        run(&args, &[&data.join("manifest.jsonl").display()])
    }),
    ("train with a bad manifest line", |w| {
        let data = w.join("data");
        std::fs::create_dir_all(&data).unwrap();
        std::fs::write(data.join("manifest.jsonl"), "{\"image\": \"a.png\", \"prompt\": \"x\"}\nnot json\n").unwrap();
        let weights = fixtures().join("weights");
        let args: [&dyn AsRef<std::ffi::OsStr>; 9] =
            [&"train", &"--data", &data, &"--out", &out(w).join("run"), &"--weights", &weights, &"--steps", &"1"];
        run(&args, &[&"manifest.jsonl:"])
    }),
    ("train over --max-memory", |w| {
        let data = w.join("data");
        std::fs::create_dir_all(&data).unwrap();
        std::fs::copy(fixtures().join("images/drawing.png"), data.join("a.png")).unwrap();
        std::fs::write(data.join("manifest.jsonl"), "{\"image\": \"a.png\", \"prompt\": \"x\"}\n").unwrap();
        let weights = fixtures().join("weights");
        let args: [&dyn AsRef<std::ffi::OsStr>; 11] = [
            &"train",
            &"--data",
            &data,
            &"--out",
            &out(w).join("run"),
            &"--weights",
            &weights,
            &"--resolution",
            &"4096",
            &"--max-memory",
            &"1G",
        ];
        run(&args, &[&"training micro-batches of 5 at 4096x4096", &"the --max-memory limit"])
    }),
    ("export a run with no checkpoint", |w| {
        let run_dir = w.join("run");
        std::fs::create_dir_all(&run_dir).unwrap();
        run(&[&"export", &run_dir, &"--version", &"7", &"--out", &out(w)], &[&run_dir.display()])
    }),
    ("export a checkpoint whose weights are empty", |w| {
        let checkpoint = w.join("run/checkpoints/step-000001");
        std::fs::create_dir_all(&checkpoint).unwrap();
        for name in ["model.safetensors", "optimizer.safetensors", "state.json"] {
            std::fs::write(checkpoint.join(name), b"").unwrap();
        }
        run(&[&"export", &w.join("run"), &"--version", &"7", &"--out", &out(w)], &[&checkpoint.display()])
    }),
    ("serve with sd15 missing", |w| {
        let weights = weights(w);
        std::fs::remove_dir_all(weights.join("sd15")).unwrap();
        let outputs = out(w).join("served");
        let args: [&dyn AsRef<std::ffi::OsStr>; 7] =
            [&"serve", &"--bind", &"127.0.0.1:0", &"--weights", &weights, &"--outputs", &outputs];
        run(&args, &[&"sd15", &weights.display(), &"import-weights --only sd15"])
    }),
    ("serve with its outputs in a read-only folder", |w| {
        let outputs = w.join("read-only/served");
        let weights = fixtures().join("weights");
        let args: [&dyn AsRef<std::ffi::OsStr>; 7] =
            [&"serve", &"--bind", &"127.0.0.1:0", &"--weights", &weights, &"--outputs", &outputs];
        run(&args, &[&outputs.display(), &read_only_reason()])
    }),
    ("serve on an address in use", |w| {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let bind = taken.local_addr().unwrap().to_string();
        // Kept open by leaking it: the case's process must find the port taken.
        std::mem::forget(taken);
        let args: [&dyn AsRef<std::ffi::OsStr>; 7] = [
            &"serve",
            &"--bind",
            &bind,
            &"--weights",
            &fixtures().join("weights"),
            &"--outputs",
            &out(w).join("served"),
        ];
        run(&args, &[&bind])
    }),
    // --- codes (no files) ---
    ("inspect a code that is too short", |_| run(&[&"inspect", &"AAAA"], &[&"AAAA"])),
    ("convert a code with a bad character", |_| {
        run(&[&"convert", &"C/d/AAI/rQglIvUb1/f!1", &"--to", &"official"], &[&"'!'"])
    }),
    ("mix a code with a bad weight", |_| run(&[&"mix", &"C/d/AAI/rQglIvUb1/fC1:x"], &[&"C/d/AAI/rQglIvUb1/fC1:x"])),
    ("random with a bad version", |_| {
        run(&[&"random", &"--version", &"!"], &[&"code version '!' is not a base64 symbol"])
    }),
    ("inspect a non-UTF-8 code", |_| Run {
        args: vec!["inspect".into(), OsString::from_vec(b"A\xff".to_vec())],
        names: vec![],
    }),
    ("reproduce an empty file", |w| {
        let f = file(w, "empty.png", b"");
        run(&[&"reproduce", &f, &"--out", &out(w).join("again.png")], &[&f.display()])
    }),
    ("reproduce a PNG that stylecode did not make", |w| {
        let f = w.join("plain.png");
        std::fs::copy(fixtures().join("reference/drawing_224.png"), &f).unwrap();
        run(&[&"reproduce", &f, &"--out", &out(w).join("again.png")], &[&f.display()])
    }),
    ("reproduce a text file named .png", |w| {
        let f = file(w, "text.png", b"not a png at all\n");
        run(&[&"reproduce", &f, &"--out", &out(w).join("again.png")], &[&f.display()])
    }),
];

/// Runs the CLI in `work` (HOME there, no $STYLECODE_WEIGHTS), killing it if it hangs.
fn stylecode(work: &Path, args: &[OsString]) -> (Option<std::process::ExitStatus>, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_stylecode"))
        .args(args)
        .env_remove("STYLECODE_WEIGHTS")
        .env("HOME", work.join("home"))
        .env("XDG_DATA_HOME", work.join("home/.local/share"))
        .env("RUST_BACKTRACE", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("runs");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if started.elapsed() > Duration::from_secs(120) {
            child.kill().unwrap();
            child.wait().unwrap();
            return (None, "did not exit: it should have refused its input at once".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    (status, stderr)
}

/// Every file under `dir` (empty folders are not files).
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return vec![] };
    entries.flatten().flat_map(|e| if e.path().is_dir() { files_under(&e.path()) } else { vec![e.path()] }).collect()
}

/// A part of `message` (between `: `) of some length that occurs twice: a
/// cause printed by its error and again by the chain.
fn repeated_part(message: &str) -> Option<&str> {
    let parts: Vec<&str> = message.split(": ").map(str::trim).filter(|p| p.len() >= 12).collect();
    parts.iter().enumerate().find(|(i, p)| parts[i + 1..].contains(p)).map(|(_, p)| *p)
}

/// What is wrong with one case's result, if anything.
fn check(status: Option<std::process::ExitStatus>, stderr: &str, names: &[String], out: &Path) -> Result<(), String> {
    let Some(status) = status else { return Err(stderr.to_string()) };
    if status.success() {
        return Err("exited 0".into());
    }
    if stderr.contains("panicked") || stderr.contains("backtrace") || stderr.contains("RUST_BACKTRACE") {
        return Err("panicked".into());
    }
    // clap follows its one-line errors with the usage and a hint.
    let hint = |l: &str| l.starts_with("For more information") || l.starts_with("Usage: ");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty() && !hint(l)).collect();
    let [line] = lines.as_slice() else { return Err(format!("{} lines, expected one", lines.len())) };
    if !line.starts_with("error: ") {
        return Err("the line does not start with `error: `".into());
    }
    if let Some(missing) = names.iter().find(|n| !line.contains(n.as_str())) {
        return Err(format!("does not name `{missing}`"));
    }
    if line.matches("(os error").count() > 1 {
        return Err("an OS message twice".into());
    }
    if let Some(part) = repeated_part(line) {
        return Err(format!("says `{part}` twice"));
    }
    let left = files_under(out);
    if !left.is_empty() {
        return Err(format!("left {left:?}"));
    }
    Ok(())
}

#[test]
fn every_command_refuses_bad_input_in_one_line_and_leaves_nothing() {
    let mut failures = Vec::new();
    for (name, setup) in CASES {
        let work = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(out(work.path())).unwrap();
        let read_only = ReadOnlyDir::mount(work.path().join("read-only"));
        let case = setup(work.path());
        let (status, stderr) = stylecode(work.path(), &case.args);
        eprintln!("{name}: {}", stderr.trim());
        if let Err(why) = check(status, &stderr, &case.names, &out(work.path())) {
            failures.push(format!("{name}: {why}\n    {}", stderr.trim().replace('\n', "\n    ")));
        }
        assert!(!read_only.mounted || files_under(&read_only.path).is_empty());
    }
    assert!(failures.is_empty(), "{} of {} cases failed:\n{}", failures.len(), CASES.len(), failures.join("\n"));
}

#[test]
fn the_checker_catches_what_it_must() {
    assert_eq!(
        repeated_part("a.png: No such file or directory (os error 2): No such file or directory (os error 2)"),
        Some("No such file or directory (os error 2)")
    );
    assert_eq!(repeated_part("error: a.png: cannot decode image: not a PNG or JPEG file"), None);
}
