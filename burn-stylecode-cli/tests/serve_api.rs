//! `stylecode serve`'s HTTP API against a real server on a loopback port,
//! over the tiny fixture weights: each route's answer is checked against
//! what the CLI gives for the same input.

mod serve_common;

use serde_json::{json, Value};
use serve_common::{fixture_bytes, png_files, stylecode, weights, Server};
use std::collections::HashSet;

/// Pixels per latent cell of the tiny VAE: ×2 per block after the first.
fn vae_scale_factor() -> u32 {
    let config: Value = serde_json::from_slice(&fixture_bytes("weights/sd15/vae/config.json")).unwrap();
    1 << (config["block_out_channels"].as_array().unwrap().len() - 1)
}

/// The image in a `data:image/png;base64,…` URL.
fn data_url_png(url: &str) -> image::RgbImage {
    use base64::Engine;
    let data = url.strip_prefix("data:image/png;base64,").unwrap_or_else(|| panic!("not a PNG data URL: {url}"));
    let bytes = base64::engine::general_purpose::STANDARD.decode(data).unwrap();
    image::load_from_memory_with_format(&bytes, image::ImageFormat::Png).unwrap().to_rgb8()
}

/// A PNG whose IHDR claims `width`×`height` RGB, with one tiny IDAT (an
/// empty zlib stream) and IEND: a few dozen bytes.
fn png_claiming(width: u32, height: u32) -> Vec<u8> {
    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &byte in bytes {
            crc ^= u32::from(byte);
            for _ in 0..8 {
                crc = if crc & 1 == 1 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
            }
        }
        !crc
    }
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    for (kind, data) in [
        (&b"IHDR"[..], [&width.to_be_bytes()[..], &height.to_be_bytes(), &[8, 2, 0, 0, 0]].concat()),
        (b"IDAT", vec![0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01]),
        (b"IEND", Vec::new()),
    ] {
        png.extend((data.len() as u32).to_be_bytes());
        let body = [kind, &data].concat();
        png.extend(&body);
        png.extend(crc32(&body).to_be_bytes());
    }
    png
}

/// A generation long enough (tiny weights, many steps) to cancel mid-way.
fn long_job() -> Value {
    json!({ "prompt": "a long job", "width": 16, "height": 16, "steps": 400, "num": 16, "seed": 1 })
}

#[test]
fn health_names_backend_and_weights_version() {
    let server = Server::start(&[]);
    let reply = server.get("/api/health");
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json["status"], "ok");
    assert_eq!(reply.json["backend"], "cpu");
    assert_eq!(reply.json["version"], env!("CARGO_PKG_VERSION"));
    let (_, random, _) = stylecode(&["random", "--seed", "1"]);
    assert_eq!(reply.json["stylecodes_version"], random.trim().chars().last().unwrap().to_string());
    let page = server.get("/");
    assert_eq!(page.status, 200);
    assert!(page.content_type.starts_with("text/html"));
}

#[test]
fn encode_inspect_mix_and_random_answer_as_the_cli() {
    let server = Server::start(&[]);
    let reply = server.post_images(
        "/api/encode",
        &[("photo.jpg", &fixture_bytes("images/photo.jpg")), ("drawing.png", &fixture_bytes("images/drawing.png"))],
    );
    assert_eq!(reply.status, 200, "{:?}", reply.json);
    let codes = reply.json["codes"].as_array().unwrap();
    let photo = serve_common::fixtures().join("images/photo.jpg").display().to_string();
    let drawing = serve_common::fixtures().join("images/drawing.png").display().to_string();
    let (ok, out, err) = stylecode(&["encode", "--json", "--weights", &weights(), &photo, &drawing]);
    assert!(ok, "{err}");
    let cli: Vec<Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(codes.len(), 2);
    for ((served, cli), name) in codes.iter().zip(&cli).zip(["photo.jpg", "drawing.png"]) {
        assert_eq!(served["name"], name);
        assert_eq!(served["code"], cli["code"]);
        assert_eq!(served["latent"], cli["latent"]);
        let (_, official, _) = stylecode(&["convert", cli["code"].as_str().unwrap(), "--to", "official"]);
        assert_eq!(served["official"], official.trim());
        assert!(served.get("stored_code").is_none());
    }
    let code = codes[0]["code"].as_str().unwrap();
    let other = codes[1]["code"].as_str().unwrap();

    let inspected = server.post_json("/api/inspect", &json!({ "code": code }));
    let (_, cli_inspect, _) = stylecode(&["inspect", "--json", code]);
    assert_eq!(inspected.json, serde_json::from_str::<Value>(&cli_inspect).unwrap());

    let mixed = server.post_json("/api/mix", &json!({ "codes": [{ "code": code, "weight": 2 }, { "code": other }] }));
    assert_eq!(mixed.status, 200, "{:?}", mixed.json);
    let (_, cli_mix, _) = stylecode(&["mix", &format!("{code}:2"), other]);
    assert_eq!(mixed.json["code"], cli_mix.trim());
    assert_ne!(mixed.json["code"], code);

    let random = server.get("/api/random?seed=5");
    let (_, cli_random, _) = stylecode(&["random", "--seed", "5"]);
    assert_eq!(random.json["code"], cli_random.trim());
    assert_ne!(server.get("/api/random?seed=6").json["code"], random.json["code"]);
}

#[test]
fn generate_streams_progress_then_the_images_the_cli_makes() {
    let server = Server::start(&[]);
    let body = json!({ "prompt": "a lighthouse at dusk", "negative": "blurry", "width": 48, "height": 32,
                       "steps": 3, "seed": 7, "num": 2 });
    let job = server.submit(&body);
    let events = server.events(job);
    let (last, progress) = events.split_last().unwrap();
    assert_eq!(last.0, "done", "{events:?}");
    let final_progress = &progress.last().expect("a progress event").1;
    assert_eq!((final_progress["step"].as_u64(), final_progress["steps"].as_u64()), (Some(3), Some(3)));
    assert_eq!(final_progress["image"], 1);
    assert!(progress.iter().all(|(name, _)| name == "progress" || name == "preview"));
    // Previews every 2 steps and at the last: small PNGs of the latent's size.
    let previews: Vec<&Value> = progress.iter().filter(|(name, _)| name == "preview").map(|(_, data)| data).collect();
    assert!(!previews.is_empty(), "{events:?}");
    let factor = vae_scale_factor();
    for preview in &previews {
        assert!(preview["step"].as_u64().unwrap() % 2 == 0 || preview["step"] == 3, "{preview}");
        let png = data_url_png(preview["url"].as_str().unwrap());
        assert_eq!(png.dimensions(), (48 / factor, 32 / factor));
    }
    assert!(previews.iter().any(|p| p["image"] == 1 && p["step"] == 3), "the last step of the last image");
    let urls: Vec<&str> = last.1["images"].as_array().unwrap().iter().map(|u| u.as_str().unwrap()).collect();
    assert_eq!(urls.len(), 2);
    assert_eq!(last.1["recipe"][1]["seed"], "8");

    let status = server.get(&format!("/api/jobs/{job}"));
    assert_eq!(status.json["state"], "done");
    assert_eq!(status.json["images"], last.1["images"]);

    // The same image as `stylecode generate` with the same settings and seed,
    // with the same text chunks.
    let dir = tempfile::tempdir().unwrap();
    let cli_png = dir.path().join("cli.png");
    let (ok, _, err) = stylecode(&[
        "generate",
        "--prompt",
        "a lighthouse at dusk",
        "--negative",
        "blurry",
        "--width",
        "48",
        "--height",
        "32",
        "--steps",
        "3",
        "--seed",
        "8",
        "--weights",
        &weights(),
        "--out",
        cli_png.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let served = server.get(urls[1]);
    assert_eq!(served.content_type, "image/png");
    let served_path = dir.path().join("served.png");
    std::fs::write(&served_path, &served.bytes).unwrap();
    assert_eq!(
        image::open(&served_path).unwrap().to_rgb8().into_raw(),
        image::open(&cli_png).unwrap().to_rgb8().into_raw()
    );
    assert_eq!(burn_stylecode::read_png_text(&served_path).unwrap(), burn_stylecode::read_png_text(&cli_png).unwrap());

    // A second identical job writes new files; none is overwritten.
    let before: Vec<Vec<u8>> =
        png_files(&server.outputs).iter().map(|n| std::fs::read(server.outputs.join(n)).unwrap()).collect();
    let again = server.submit(&body);
    assert_eq!(server.events(again).last().unwrap().0, "done");
    let files = png_files(&server.outputs);
    assert_eq!(files.len(), 4, "{files:?}");
    assert_eq!(files.iter().collect::<HashSet<_>>().len(), 4);
    for (name, bytes) in files.iter().zip(&before) {
        assert_eq!(&std::fs::read(server.outputs.join(name)).unwrap(), bytes, "{name} unchanged");
    }
}

#[test]
fn a_png_we_made_gives_back_its_code_and_recipe() {
    let server = Server::start(&[]);
    let code = server.get("/api/random?seed=3").json["code"].as_str().unwrap().to_string();
    let job = server.submit(&json!({ "prompt": "a fox", "width": 32, "height": 32, "steps": 2, "seed": 11,
                                     "styles": [{ "code": code }], "style_scale": 0.5 }));
    let events = server.events(job);
    let done = &events.last().unwrap().1;
    assert_eq!(done["recipe"][0]["stylecode"], code.as_str(), "{events:?}");
    let png = server.get(done["images"][0].as_str().unwrap()).bytes;

    let encoded = server.post_images("/api/encode", &[("ours.png", &png)]);
    assert_eq!(encoded.json["codes"][0]["stored_code"], code.as_str(), "{:?}", encoded.json);

    let inspected = server.post_images("/api/inspect", &[("ours.png", &png)]);
    assert_eq!(inspected.status, 200, "{:?}", inspected.json);
    let recipe = &inspected.json["recipe"];
    for (key, value) in [("prompt", "a fox"), ("seed", "11"), ("steps", "2"), ("style_scale", "0.5")] {
        assert_eq!(recipe[key], value, "{recipe}");
    }
    assert_eq!(recipe["stylecode"], code.as_str());

    // A PNG without a recipe is named in the error.
    let plain = server.post_images("/api/inspect", &[("drawing.png", &fixture_bytes("images/drawing.png"))]);
    let (status, error) = plain.error();
    assert_eq!(status, 400);
    assert!(error.contains("drawing.png") && error.contains("`prompt`"), "{error}");
}

#[test]
fn cancel_stops_a_running_job_and_a_queued_one_and_the_next_job_runs() {
    let server = Server::start(&[]);
    let running = server.submit(&long_job());
    let queued = server.submit(&long_job());
    server.wait_for_state(running, "running");
    assert_eq!(server.get(&format!("/api/jobs/{queued}")).json["state"], "queued");

    let reply = server.post_json(&format!("/api/jobs/{queued}/cancel"), &json!({}));
    assert_eq!(reply.json["state"], "cancelled");
    server.post_json(&format!("/api/jobs/{running}/cancel"), &json!({}));
    let events = server.events(running);
    assert_eq!(events.last().unwrap().0, "cancelled", "{events:?}");
    let status = server.get(&format!("/api/jobs/{running}")).json;
    assert_eq!(status["state"], "cancelled");
    assert!(status["images"].as_array().unwrap().len() < 16, "{status}");

    let next = server.submit(&json!({ "prompt": "after", "width": 16, "height": 16, "steps": 2 }));
    assert_eq!(server.events(next).last().unwrap().0, "done");
    assert_eq!(server.get(&format!("/api/jobs/{queued}")).json["images"], json!([]));
}

#[test]
fn a_token_is_required_when_given_and_off_loopback() {
    let server = Server::start(&["--token", "s3cret"]);
    assert_eq!(server.get("/api/health").status, 200);
    for header in [None, Some("Bearer wrong"), Some("s3cret"), Some("Bearer s3cret2")] {
        let mut request = ureq::get(&server.url("/api/health"));
        if let Some(header) = header {
            request = request.set("Authorization", header);
        }
        let reply = serve_common::Reply::from(request.call());
        let (status, error) = reply.error();
        assert_eq!(status, 401, "{header:?}");
        assert!(error.contains("Authorization: Bearer"), "{error}");
    }
    let reply = serve_common::Reply::from(ureq::post(&server.url("/api/generate")).send_string("{}"));
    assert_eq!(reply.status, 401, "the token is checked before the body");
    assert_eq!(serve_common::Reply::from(ureq::get(&server.url("/")).call()).status, 200, "the page itself is open");

    // Off loopback without --token: refused before anything is bound.
    let (ok, _, err) = stylecode(&["serve", "--bind", "0.0.0.0:0", "--weights", &weights()]);
    assert!(!ok);
    assert!(err.contains("--token") && err.contains("--insecure") && err.contains("0.0.0.0:0"), "{err}");
}

#[test]
fn a_full_queue_answers_429_with_retry_after() {
    let server = Server::start(&["--queue", "1"]);
    let running = server.submit(&long_job());
    server.wait_for_state(running, "running");
    let waiting = server.submit(&long_job());
    let full = server.post_json("/api/generate", &long_job());
    let (status, error) = full.error();
    assert_eq!(status, 429);
    assert!(error.contains("queue"), "{error}");
    assert!(full.retry_after.as_ref().unwrap().parse::<u32>().unwrap() > 0);
    for job in [waiting, running] {
        server.post_json(&format!("/api/jobs/{job}/cancel"), &json!({}));
    }
    server.wait_for_state(running, "cancelled");
    server.submit(&long_job());
}

#[test]
fn bad_input_gets_a_json_error_naming_the_problem() {
    let server = Server::start(&["--upload-limit", "1"]);
    let (status, body) = server.post_oversized("/api/encode", "big.png", 3 << 20);
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("1 MiB"), "{body}");
    let cases: Vec<(serve_common::Reply, u16, &str)> = vec![
        (server.post_images("/api/encode", &[("notes.txt", b"not an image")]), 400, "notes.txt"),
        (server.post_json("/api/encode", &json!({})), 400, "multipart"),
        (server.post_json("/api/generate", &json!({ "prompt": "x", "width": 47 })), 400, "width 47"),
        (server.post_json("/api/generate", &json!({ "prompt": "x", "scheduler": "plms" })), 400, "plms"),
        (
            server.post_json("/api/generate", &json!({ "prompt": "x", "styles": [{ "code": "tooshort" }] })),
            400,
            "tooshort",
        ),
        (server.post_json("/api/generate", &json!({ "prompt": "x", "num": 0 })), 400, "num 0"),
        (server.post_json("/api/generate", &json!({ "prompt": "x", "stpes": 3 })), 400, "stpes"),
        (server.post_json("/api/generate", &json!({ "negative": "x" })), 400, "prompt"),
        (server.post_json("/api/mix", &json!({ "codes": [] })), 400, "no codes"),
        (server.post_json("/api/inspect", &json!({ "code": "AAAA" })), 400, "AAAA"),
        (server.get("/api/random?seed=minus"), 400, "seed"),
        (server.get("/api/jobs/12345"), 404, "12345"),
        (server.get("/api/jobs/12345/events"), 404, "12345"),
        (server.post_json("/api/jobs/nope/cancel", &json!({})), 404, "nope"),
        (server.get("/api/images/..%2Fsecret.png"), 404, "secret"),
        (server.get("/api/images/missing.png"), 404, "missing.png"),
        (server.get("/api/nothing"), 404, "no such route"),
    ];
    for (reply, status, needle) in &cases {
        let (got, error) = reply.error();
        assert_eq!(got, *status, "{error}");
        assert!(error.contains(needle), "`{needle}` not in {error}");
    }
    // The size error is the CLI's.
    let (ok, _, err) = stylecode(&["generate", "--prompt", "x", "--width", "47", "--weights", &weights()]);
    assert!(!ok && err.contains(cases[2].0.json["error"].as_str().unwrap()), "{err}");
    assert_eq!(server.get("/api/health").status, 200);
}

#[test]
fn thirty_concurrent_requests_with_a_queue_of_four() {
    let server = Server::start(&["--queue", "4"]);
    let health_ok = std::sync::atomic::AtomicUsize::new(0);
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (accepted, refused) = std::thread::scope(|scope| {
        let watcher = scope.spawn(|| {
            // Bounded: at most 2000 polls.
            for _ in 0..2000 {
                if stop.load(std::sync::atomic::Ordering::SeqCst) {
                    break;
                }
                assert_eq!(server.get("/api/health").status, 200);
                health_ok.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        });
        let requests: Vec<_> = (0..30)
            .map(|k| {
                let server = &server;
                scope.spawn(move || {
                    let body = json!({ "prompt": format!("request {k}"), "width": 16, "height": 16, "steps": 2,
                                       "seed": k, "num": 1 + k % 2 });
                    server.post_json("/api/generate", &body)
                })
            })
            .collect();
        let replies: Vec<_> = requests.into_iter().map(|r| r.join().unwrap()).collect();
        let mut accepted = Vec::new();
        let mut refused = 0;
        for reply in &replies {
            match reply.status {
                202 => accepted.push(reply.json["job"].as_u64().unwrap()),
                429 => refused += 1,
                other => panic!("status {other}: {:?}", reply.json),
            }
        }
        let mut images = Vec::new();
        for job in &accepted {
            let events = server.events(*job);
            let done = &events.last().unwrap();
            assert_eq!(done.0, "done", "{events:?}");
            images.extend(done.1["images"].as_array().unwrap().iter().map(|u| u.as_str().unwrap().to_string()));
        }
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        watcher.join().unwrap();
        let distinct: HashSet<_> = images.iter().collect();
        assert_eq!(distinct.len(), images.len(), "no image is written twice");
        let on_disk: Vec<String> = png_files(&server.outputs).into_iter().map(|n| format!("/api/images/{n}")).collect();
        assert_eq!(on_disk.iter().collect::<HashSet<_>>(), distinct, "no image is lost");
        (accepted.len(), refused)
    });
    assert_eq!(accepted + refused, 30);
    assert!(accepted >= 4, "a queue of 4 takes 4 at least: {accepted}");
    assert!(health_ok.load(std::sync::atomic::Ordering::SeqCst) > 0);
    eprintln!("30 concurrent requests: {accepted} accepted, {refused} refused");
}

#[test]
fn a_failed_job_is_reported_and_the_server_carries_on() {
    let (_dir, copy) = burn_stylecode_tests::weights_copy();
    let unet = copy.root().join("sd15/unet/diffusion_pytorch_model.safetensors");
    std::fs::write(&unet, b"not safetensors").unwrap();
    let server = Server::start_on(&copy.root().display().to_string(), &[]);
    let small = json!({ "prompt": "x", "width": 16, "height": 16, "steps": 2 });
    for _ in 0..2 {
        let job = server.submit(&small);
        let events = server.events(job);
        let (name, data) = events.last().unwrap();
        assert_eq!(name, "error", "{events:?}");
        assert!(data["error"].as_str().unwrap().contains("diffusion_pytorch_model.safetensors"), "{data}");
        let status = server.get(&format!("/api/jobs/{job}")).json;
        assert_eq!(status["state"], "failed");
        assert_eq!(status["error"], data["error"]);
    }
    assert_eq!(server.get("/api/health").status, 200);
    let encoded = server.post_images("/api/encode", &[("photo.jpg", &fixture_bytes("images/photo.jpg"))]);
    assert_eq!(encoded.status, 200, "encoding needs no SD1.5: {:?}", encoded.json);
    assert!(png_files(&server.outputs).is_empty());
}

#[test]
fn loras_are_picked_by_name_from_the_lora_folder() {
    let folder = tempfile::tempdir().unwrap();
    let kohya = serve_common::fixtures().join("lora/kohya.safetensors");
    std::fs::copy(&kohya, folder.path().join("kohya.safetensors")).unwrap();
    std::fs::write(folder.path().join("notes.txt"), "not a LoRA").unwrap();
    let server = Server::start(&["--loras", folder.path().to_str().unwrap()]);
    assert_eq!(server.get("/api/loras").json, json!({ "loras": [{ "name": "kohya.safetensors" }] }));

    let body = json!({ "prompt": "a lighthouse", "width": 24, "height": 16, "steps": 2, "seed": 3,
                       "loras": [{ "name": "kohya.safetensors", "weight": 0.5 }] });
    let job = server.submit(&body);
    let events = server.events(job);
    let done = &events.last().unwrap().1;
    assert_eq!(events.last().unwrap().0, "done", "{events:?}");
    let served = server.get(done["images"][0].as_str().unwrap()).bytes;
    let dir = tempfile::tempdir().unwrap();
    let cli_png = dir.path().join("cli.png");
    let lora = format!("{}:0.5", kohya.display());
    let (ok, _, err) = stylecode(&[
        "generate",
        "--prompt",
        "a lighthouse",
        "--width",
        "24",
        "--height",
        "16",
        "--steps",
        "2",
        "--seed",
        "3",
        "--lora",
        &lora,
        "--weights",
        &weights(),
        "--out",
        cli_png.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let served = image::load_from_memory(&served).unwrap().to_rgb8();
    assert_eq!(served.into_raw(), image::open(&cli_png).unwrap().to_rgb8().into_raw());
    let plain = server.submit(&json!({ "prompt": "a lighthouse", "width": 24, "height": 16, "steps": 2, "seed": 3 }));
    let plain = server.events(plain).last().unwrap().1.clone();
    assert_ne!(
        server.get(plain["images"][0].as_str().unwrap()).bytes,
        server.get(done["images"][0].as_str().unwrap()).bytes
    );
    assert!(done["recipe"][0]["loras"].as_str().unwrap().starts_with("kohya.safetensors:0.5:0.5:"), "{done}");

    for name in ["missing.safetensors", "notes.txt", "../lora/kohya.safetensors"] {
        let reply = server.post_json("/api/generate", &json!({ "prompt": "x", "loras": [{ "name": name }] }));
        let (status, error) = reply.error();
        assert_eq!(status, 400);
        assert!(error.contains(&format!("`{name}`")) && error.contains("/api/loras"), "{error}");
    }
    let without = Server::start(&[]);
    assert_eq!(without.get("/api/loras").json, json!({ "loras": [] }));
    let reply =
        without.post_json("/api/generate", &json!({ "prompt": "x", "loras": [{ "name": "kohya.safetensors" }] }));
    let (status, error) = reply.error();
    assert_eq!(status, 400);
    assert!(error.contains("--loras"), "{error}");
}

#[test]
fn uploads_over_the_pixel_limit_and_requests_over_the_memory_limit_get_400() {
    let server = Server::start(&["--max-memory", "1M"]);
    let reply = server.post_images("/api/encode", &[("huge.png", &png_claiming(20000, 20000))]);
    let (status, error) = reply.error();
    assert_eq!(status, 400);
    assert!(error.contains("huge.png") && error.contains("20000") && error.contains("pixel"), "{error}");

    let reply = server.post_json("/api/generate", &json!({ "prompt": "x", "width": 64, "height": 64, "steps": 1 }));
    let (status, error) = reply.error();
    assert_eq!(status, 400);
    assert!(error.contains("1.0 MiB") && error.contains("64x64"), "{error}");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.png");
    let (ok, _, err) = stylecode(&[
        "generate",
        "-p",
        "x",
        "--width",
        "64",
        "--height",
        "64",
        "--steps",
        "1",
        "--max-memory",
        "1M",
        "--weights",
        &weights(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(!ok && err.contains(error), "the CLI's message: {err}");
    assert!(png_files(&server.outputs).is_empty());
    assert_eq!(server.get("/api/health").status, 200);
}

#[test]
fn a_job_that_panics_is_failed_and_the_next_one_runs() {
    let server =
        Server::start_with_env(&weights(), &[], &[("STYLECODE_SERVE_PANIC_PROMPT", "boom"), ("RUST_BACKTRACE", "0")]);
    let job = server.submit(&json!({ "prompt": "boom", "width": 16, "height": 16, "steps": 2 }));
    let events = server.events(job);
    let (name, data) = events.last().unwrap();
    assert_eq!(name, "error", "{events:?}");
    assert!(data["error"].as_str().unwrap().contains("panicked"), "{data}");
    assert_eq!(server.get(&format!("/api/jobs/{job}")).json["state"], "failed");
    let next = server.submit(&json!({ "prompt": "after the panic", "width": 16, "height": 16, "steps": 2 }));
    assert_eq!(server.events(next).last().unwrap().0, "done");
    assert_eq!(png_files(&server.outputs).len(), 1);
}
