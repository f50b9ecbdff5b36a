//! The dataset layer of training (`burn_stylecode::train::data`): target
//! preprocessing against torchvision (`fixtures/make_train_data_fixtures.py`),
//! every bad manifest entry with and without `skip_bad`, the resumable data
//! order and the dropout masks.

use burn_stylecode::siglip::preprocess::{load_rgb, resize_bilinear};
use burn_stylecode::train::data::{
    check_resolution, preprocess_target, write_skipped, Dataset, DatasetOptions, Dropout, Order, OrderPosition, Skipped,
};
use burn_stylecode::Error;
use burn_stylecode_tests::{assert_finite, device, fixtures, reference, TestBackend};
use image::RgbImage;
use std::path::Path;

const OPTIONS: DatasetOptions = DatasetOptions { resolution: 16, skip_bad: false };
const SKIP_BAD: DatasetOptions = DatasetOptions { resolution: 16, skip_bad: true };

/// Max |a - b| over two equally long slices of finite values.
fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    assert_finite("output", a);
    assert_finite("reference", b);
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn targets_match_torchvision() {
    let file = reference("train_data.safetensors");
    let images = [
        ("drawing", fixtures().join("images/drawing.png")),
        ("wide", fixtures().join("reference/train_data_wide.png")),
        ("small", fixtures().join("reference/train_data_small.png")),
        ("tall", fixtures().join("reference/train_data_tall.png")),
    ];
    for (name, path) in &images {
        let image = load_rgb(path).unwrap();
        for resolution in [16, 24] {
            let expected = file.read_f32(&format!("target.{name}.{resolution}")).unwrap();
            let actual = preprocess_target(&image, resolution).unwrap();
            let diff = max_diff(&actual, &expected);
            eprintln!("target {name} at {resolution}: max |diff| {diff:e}");
            assert_eq!(diff, 0.0, "{name} at {resolution}: PIL is exact in 8 bits");
        }
    }
}

#[test]
fn bilinear_resize_matches_pillow_exactly() {
    let file = reference("train_data.safetensors");
    let drawing = load_rgb(fixtures().join("images/drawing.png")).unwrap();
    let small = load_rgb(fixtures().join("reference/train_data_small.png")).unwrap();
    for (key, image, width, height) in [
        ("resize.drawing.20x60", &drawing, 20, 60),
        ("resize.drawing.9x30", &drawing, 9, 30),
        ("resize.small.5x40", &small, 5, 40),
        // Vertical pass first (Pillow >= 13).
        ("resize.drawing.160x12", &drawing, 160, 12),
        ("resize.drawing.100x20", &drawing, 100, 20),
    ] {
        let expected = file.read_f32(key).unwrap();
        let actual: Vec<f32> = resize_bilinear(image, width, height).as_raw().iter().map(|&v| f32::from(v)).collect();
        let wrong = actual.iter().zip(&expected).filter(|(a, b)| a != b).count();
        let diff = max_diff(&actual, &expected);
        assert_eq!(wrong, 0, "{key}: {wrong} of {} values differ, by up to {diff}", actual.len());
    }
}

#[test]
fn resolution_must_be_a_positive_multiple_of_8() {
    for bad in [0, 12, 513] {
        let message = check_resolution(bad).unwrap_err().to_string();
        assert!(message.contains(&bad.to_string()) && message.contains("multiple of 8"), "{message}");
        let image = RgbImage::new(4, 4);
        assert!(preprocess_target(&image, bad).is_err());
        let dir = dataset(&[r#"{"image": "a.png", "prompt": ""}"#]);
        let options = DatasetOptions { resolution: bad, skip_bad: true };
        assert!(Dataset::open(dir.path(), &options).unwrap_err().to_string().contains(&bad.to_string()));
    }
    check_resolution(8).unwrap();
}

/// A temporary dataset: `a.png` … `d.png` (different sizes and colours), a
/// copy of the not-an-image fixture as `broken.png`, and the manifest `lines`.
fn dataset(lines: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (i, name) in ["a", "b", "c", "d"].iter().enumerate() {
        let i = i as u32;
        let image =
            RgbImage::from_fn(20 + 3 * i, 17 + 5 * i, |x, y| image::Rgb([(x * 9) as u8, (y * 7) as u8, 40 * i as u8]));
        image.save(dir.path().join(format!("{name}.png"))).unwrap();
    }
    std::fs::copy(fixtures().join("images/not_an_image.jpg"), dir.path().join("broken.png")).unwrap();
    std::fs::write(dir.path().join("manifest.jsonl"), lines.join("\n")).unwrap();
    dir
}

#[test]
fn opens_both_forms_and_batches_them() {
    let dir = dataset(&[
        r#"{"style": "a.png", "target": "b.png", "prompt": "a pair"}"#,
        "",
        "   ",
        r#"{"image": "c.png", "prompt": "self"}"#,
        r#"{"prompt": "", "target": "a.png", "style": "d.png"}"#,
    ]);
    let (data, skipped) = Dataset::open(dir.path(), &OPTIONS).unwrap();
    assert!(skipped.is_empty());
    assert_eq!(data.len(), 3);
    let lines: Vec<usize> = data.entries().iter().map(|e| e.line).collect();
    assert_eq!(lines, [1, 4, 5]);
    assert_eq!(data.entries()[0].style, dir.path().join("a.png"));
    assert_eq!(data.entries()[0].target, dir.path().join("b.png"));
    assert!(data.entries()[1].is_reconstruction() && !data.entries()[0].is_reconstruction());
    assert_eq!(data.entries()[2].prompt, "");

    let batch = data.batch(&[2, 1, 0, 1]).unwrap();
    assert_eq!(batch.prompts, ["", "self", "a pair", "self"]);
    assert_eq!(batch.styles[0], load_rgb(dir.path().join("d.png")).unwrap());
    assert_eq!(batch.styles[1], load_rgb(dir.path().join("c.png")).unwrap());
    let plane = 3 * 16 * 16;
    let expected = preprocess_target(&load_rgb(dir.path().join("b.png")).unwrap(), 16).unwrap();
    assert_eq!(&batch.targets[2 * plane..3 * plane], &expected[..]);
    assert_eq!(&batch.targets[plane..2 * plane], &data.target(1).unwrap()[..]);
    let tensor = batch.targets_tensor::<TestBackend>(&device());
    assert_eq!(tensor.dims(), [4, 3, 16, 16]);
    assert!(batch.targets.iter().all(|v| (-1.0..=1.0).contains(v)));
}

/// Each bad line (as line 2, after a good one), what its error must say, and the image it names.
fn bad_lines() -> Vec<(&'static str, &'static str, Option<&'static str>)> {
    vec![
        (r#"{"image": "a.png", "prompt": "x""#, "not JSON", None),
        (r#"["a.png", "x"]"#, "expected a JSON object, found an array", None),
        (
            r#"{"image": "a.png", "prompt": "x", "caption": "y", "Style": "z"}"#,
            "unknown key(s) `Style`, `caption`",
            None,
        ),
        (r#"{"image": "a.png"}"#, "missing key `prompt`", None),
        (r#"{"style": "a.png", "prompt": "x"}"#, "missing key `target`", None),
        (r#"{"target": "a.png", "prompt": "x"}"#, "missing key `style`", None),
        (r#"{"prompt": "x"}"#, "missing key `image` (or `style` and `target`)", None),
        (r#"{"image": ["a.png"], "prompt": "x"}"#, "`image` must be a string, found an array", None),
        (r#"{"image": "a.png", "prompt": 3}"#, "`prompt` must be a string, found a number", None),
        (r#"{"image": "a.png", "style": "b.png", "target": "c.png", "prompt": "x"}"#, "cannot be combined", None),
        (r#"{"image": "", "prompt": "x"}"#, "`image` is an empty path", None),
        (r#"{"style": "a.png", "target": "missing.png", "prompt": "x"}"#, "cannot open image", Some("missing.png")),
        (r#"{"image": "broken.png", "prompt": "x"}"#, "cannot decode image", Some("broken.png")),
    ]
}

#[test]
fn each_bad_entry_is_an_error_naming_file_line_and_image() {
    for (line, says, image) in bad_lines() {
        let dir = dataset(&[r#"{"image": "a.png", "prompt": "good"}"#, line]);
        let error = Dataset::open(dir.path(), &OPTIONS).unwrap_err();
        let message = error.to_string();
        eprintln!("{message}");
        assert!(matches!(error, Error::Config { .. }), "{message}");
        let at = format!("{}:2: ", dir.path().join("manifest.jsonl").display());
        assert!(message.starts_with(&at), "{message}");
        assert!(message.contains(says), "{line}: {message}");
        if let Some(image) = image {
            assert!(message.contains(&format!("{}: ", dir.path().join(image).display())), "{message}");
        }
    }
}

#[test]
fn the_first_bad_line_is_reported() {
    // Line 2 has a missing image, line 3 is not JSON: line 2 comes first.
    let dir = dataset(&[r#"{"image": "a.png", "prompt": ""}"#, r#"{"image": "gone.png", "prompt": ""}"#, "{"]);
    let message = Dataset::open(dir.path(), &OPTIONS).unwrap_err().to_string();
    assert!(message.contains("manifest.jsonl:2: ") && message.contains("gone.png"), "{message}");
}

#[test]
fn skip_bad_leaves_out_counts_and_lists_bad_entries() {
    let bad = bad_lines();
    let mut lines = vec![r#"{"image": "a.png", "prompt": "first"}"#];
    lines.extend(bad.iter().map(|(line, _, _)| *line));
    lines.push("");
    lines.push(r#"{"style": "b.png", "target": "c.png", "prompt": "last"}"#);
    let dir = dataset(&lines);
    let (data, skipped) = Dataset::open(dir.path(), &SKIP_BAD).unwrap();
    assert_eq!(data.len(), 2);
    assert_eq!(data.entries()[1].line, bad.len() + 3);
    assert_eq!(skipped.len(), bad.len());
    for (i, (record, (_, says, image))) in skipped.iter().zip(&bad).enumerate() {
        assert_eq!(record.line, i + 2);
        assert!(record.error.contains(says), "{record:?}");
        assert_eq!(record.path, image.map(|name| dir.path().join(name)));
    }

    let run = tempfile::tempdir().unwrap();
    let path = run.path().join("skipped.jsonl");
    std::fs::write(&path, "stale").unwrap();
    write_skipped(&path, &skipped).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.ends_with('\n'));
    let parsed: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(parsed.len(), skipped.len());
    assert_eq!(parsed[0], serde_json::json!({"line": 2, "error": skipped[0].error}));
    let last = parsed.last().unwrap();
    assert_eq!(last["path"], serde_json::json!(dir.path().join("broken.png")));
    let back: Vec<Skipped> = parsed.into_iter().map(|v| serde_json::from_value(v).unwrap()).collect();
    assert_eq!(back, skipped);
    // Nothing but the file itself is left in the folder.
    assert_eq!(std::fs::read_dir(run.path()).unwrap().count(), 1);

    write_skipped(&path, &[]).unwrap();
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "");
}

#[test]
fn an_empty_dataset_is_an_error() {
    for lines in [&[][..], &["", "  "][..]] {
        let dir = dataset(lines);
        let message = Dataset::open(dir.path(), &SKIP_BAD).unwrap_err().to_string();
        assert!(message.contains("manifest.jsonl: the dataset has no entries"), "{message}");
    }
    let dir = dataset(&["{", r#"{"image": "broken.png", "prompt": ""}"#]);
    let message = Dataset::open(dir.path(), &SKIP_BAD).unwrap_err().to_string();
    assert!(message.contains("no usable entries: all 2 were skipped"), "{message}");

    let empty = tempfile::tempdir().unwrap();
    let error = Dataset::open(empty.path(), &OPTIONS).unwrap_err();
    assert!(matches!(&error, Error::Io { path, .. } if path == &empty.path().join("manifest.jsonl")), "{error}");
}

#[test]
fn an_image_broken_after_opening_is_located() {
    let dir = dataset(&[r#"{"style": "a.png", "target": "b.png", "prompt": ""}"#]);
    let (data, _) = Dataset::open(dir.path(), &OPTIONS).unwrap();
    std::fs::write(dir.path().join("b.png"), b"\x89PNG\r\n\x1a\n truncated").unwrap();
    let message = data.batch(&[0]).unwrap_err().to_string();
    assert!(message.contains("manifest.jsonl:1: ") && message.contains("b.png"), "{message}");
}

/// Every batch of an uninterrupted run of `steps` batches of `size`.
fn uninterrupted(seed: u64, len: usize, size: usize, steps: usize) -> Vec<Vec<usize>> {
    let mut order = Order::new(seed, len).unwrap();
    (0..steps).map(|_| order.next_batch(size)).collect()
}

#[test]
fn order_resumed_at_any_step_sees_the_same_batches() {
    let (seed, len, size, steps) = (42, 7, 3, 12);
    let reference = uninterrupted(seed, len, size, steps);
    for stop in 0..=steps {
        let mut order = Order::new(seed, len).unwrap();
        let mut batches: Vec<Vec<usize>> = (0..stop).map(|_| order.next_batch(size)).collect();
        // Through a checkpoint's JSON.
        let saved = serde_json::to_string(&order.position()).unwrap();
        let position: OrderPosition = serde_json::from_str(&saved).unwrap();
        let mut resumed = Order::resume(position, len).unwrap();
        batches.extend((stop..steps).map(|_| resumed.next_batch(size)));
        assert_eq!(batches, reference, "resumed after {stop} batches");
    }
}

#[test]
fn order_is_a_fresh_shuffle_each_epoch() {
    let (seed, len) = (7, 10);
    let flat: Vec<usize> = uninterrupted(seed, len, 4, 10).concat();
    let epochs: Vec<&[usize]> = flat.chunks(len).collect();
    for (epoch, chunk) in epochs.iter().enumerate() {
        let mut sorted = chunk.to_vec();
        sorted.sort();
        assert_eq!(sorted, (0..len).collect::<Vec<_>>());
        assert_eq!(*chunk, &Order::permutation(seed, epoch as u64, len)[..]);
    }
    assert_ne!(epochs[0], epochs[1]);
    assert_ne!(Order::permutation(seed, 0, len), Order::permutation(seed + 1, 0, len));
    assert_ne!(epochs[0], &(0..len).collect::<Vec<_>>()[..]);

    let mut order = Order::new(seed, len).unwrap();
    order.next_batch(13);
    assert_eq!(order.position(), OrderPosition { seed, len, epoch: 1, index: 3 });
    assert_eq!(order.next_batch(7).len(), 7);
    assert_eq!(order.position(), OrderPosition { seed, len, epoch: 2, index: 0 });
    assert!(order.next_batch(0).is_empty());
}

#[test]
fn order_refuses_a_changed_dataset() {
    let position = OrderPosition { seed: 1, len: 5, epoch: 3, index: 2 };
    let message = Order::resume(position, 6).unwrap_err().to_string();
    assert!(message.contains("5 entries") && message.contains("has 6"), "{message}");
    assert!(Order::resume(OrderPosition { index: 5, ..position }, 5).is_err());
    assert!(Order::new(1, 0).is_err());
}

#[test]
fn dropout_masks_depend_only_on_seed_and_step() {
    let dropout = Dropout::new(3, 0.3, 0.5).unwrap();
    let masks = |step| dropout.masks(step, 64);
    // In any order, and from a fresh value (a resumed run), step k gives the same masks.
    let later = masks(1000);
    assert_eq!(masks(5), Dropout::new(3, 0.3, 0.5).unwrap().masks(5, 64));
    assert_eq!(masks(1000), later);
    assert_ne!(masks(5), masks(6));
    assert_ne!(masks(5), Dropout::new(4, 0.3, 0.5).unwrap().masks(5, 64));
    // A longer batch extends a shorter one's masks.
    assert_eq!(&dropout.masks(9, 100)[..64], &masks(9)[..]);

    let many: Vec<_> = (0..200).flat_map(masks).collect();
    let rate = |f: fn(&burn_stylecode::train::data::DropMask) -> bool| {
        many.iter().filter(|m| f(m)).count() as f64 / many.len() as f64
    };
    assert!((rate(|m| m.text) - 0.3).abs() < 0.02, "{}", rate(|m| m.text));
    assert!((rate(|m| m.style) - 0.5).abs() < 0.02, "{}", rate(|m| m.style));
    assert!((rate(|m| m.text && m.style) - 0.15).abs() < 0.02);

    // The text draws do not depend on the style probability.
    let text =
        |p_style| -> Vec<bool> { Dropout::new(3, 0.3, p_style).unwrap().masks(5, 64).iter().map(|m| m.text).collect() };
    assert_eq!(text(0.0), text(0.9));
    assert!(Dropout::new(0, 0.0, 0.0).unwrap().masks(1, 50).iter().all(|m| !m.text && !m.style));
    assert!(Dropout::new(0, 1.0, 1.0).unwrap().masks(1, 50).iter().all(|m| m.text && m.style));
    for bad in [-0.1, 1.5, f64::NAN] {
        let message = Dropout::new(0, bad, 0.0).unwrap_err().to_string();
        assert!(message.contains("--text-dropout"), "{message}");
        assert!(Dropout::new(0, 0.0, bad).unwrap_err().to_string().contains("--style-dropout"));
    }
}

#[test]
fn dataset_paths_are_relative_to_its_folder() {
    let dir = dataset(&[r#"{"image": "sub/e.png", "prompt": ""}"#]);
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    std::fs::copy(dir.path().join("a.png"), dir.path().join("sub/e.png")).unwrap();
    let (data, _) = Dataset::open(dir.path(), &OPTIONS).unwrap();
    assert_eq!(data.entries()[0].style, Path::new(dir.path()).join("sub/e.png"));
    assert_eq!(data.style_image(0).unwrap(), load_rgb(dir.path().join("a.png")).unwrap());
}
