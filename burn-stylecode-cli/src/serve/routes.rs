//! The HTTP routes: the page, the JSON API, its errors and its token check.

use super::jobs::{Job, JobState, JobStatus, JobTable, QueueFull};
use super::worker::{Work, WorkerInfo};
use crate::commands;
use axum::body::Bytes;
use axum::extract::multipart::{Multipart, MultipartError, MultipartRejection};
use axum::extract::rejection::QueryRejection;
use axum::extract::{FromRequest, Path as UrlPath, Query, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use burn_stylecode::sd::schedulers::SchedulerKind;
use burn_stylecode::siglip::preprocess::decode_rgb;
use burn_stylecode::style::code::blend;
use burn_stylecode::{
    read_png_text_bytes, CodeFormat, Error, GenerateRequest, GenerateSettings, ImageSpec, LoraSpec, Recipe, Style,
    WeightedCode,
};
use futures_util::stream::{self, Stream, StreamExt};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};
use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc};

/// Most images one generate request may ask for.
pub const MAX_IMAGES: u32 = 16;
/// Seconds a client told 429 should wait before trying again.
const RETRY_AFTER_S: u32 = 2;

pub struct AppState {
    pub work: mpsc::Sender<Work>,
    pub table: Arc<JobTable>,
    pub info: WorkerInfo,
    pub backend: String,
    pub outputs: PathBuf,
    pub token: Option<String>,
    /// Without a token on loopback: only loopback `Host` names are served.
    pub loopback_only: bool,
    pub upload_limit: usize,
    /// `--loras`: the folder whose `.safetensors` requests may name.
    pub loras: Option<PathBuf>,
}

type Shared = Arc<AppState>;

pub fn router(state: Shared) -> Router {
    let api = Router::new()
        .route("/health", get(health))
        .route("/encode", post(encode))
        .route("/inspect", post(inspect))
        .route("/mix", post(mix))
        .route("/random", get(random))
        .route("/generate", post(generate))
        .route("/loras", get(loras))
        .route("/jobs/{id}", get(job))
        .route("/jobs/{id}/events", get(events))
        .route("/jobs/{id}/cancel", post(cancel))
        .route("/images/{name}", get(image))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(state.clone(), auth));
    Router::new()
        .route("/", get(page))
        .nest("/api", api)
        .fallback(not_found)
        .layer(axum::extract::DefaultBodyLimit::max(state.upload_limit))
        .with_state(state)
}

/// An API failure: `{"error": message}` with its status.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self { status, message: message.into() }
    }

    fn bad(message: impl std::fmt::Display) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message.to_string())
    }

    fn internal(message: impl std::fmt::Display) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, message.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "error": self.message }))).into_response()
    }
}

type ApiResult<T> = Result<T, ApiError>;

fn body_error(status: StatusCode, text: String, limit: usize) -> ApiError {
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        return ApiError::new(status, format!("the request is over the {} MiB limit (--upload-limit)", limit >> 20));
    }
    ApiError::new(status, text)
}

/// A JSON body; errors name the field at fault. `Content-Type:
/// application/json` is required: a web page elsewhere cannot send that
/// without the browser asking first (a CORS preflight, which this server refuses).
struct JsonBody<T>(T);

impl<T: DeserializeOwned> FromRequest<Shared> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &Shared) -> ApiResult<Self> {
        let is_json = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"));
        if !is_json {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "send the body as `Content-Type: application/json`",
            ));
        }
        let body = Bytes::from_request(request, state)
            .await
            .map_err(|r| body_error(r.status(), r.body_text(), state.upload_limit))?;
        let value = serde_json::from_slice(&body).map_err(|e| ApiError::bad(format!("the JSON body: {e}")))?;
        Ok(JsonBody(value))
    }
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "no such route")
}

/// With `--token`, every API call needs `Authorization: Bearer TOKEN`.
/// Without one, on loopback, the `Host` must name loopback too, so a page
/// elsewhere cannot reach the API by pointing its own name at 127.0.0.1
/// (DNS rebinding).
async fn auth(State(state): State<Shared>, request: Request, next: Next) -> Response {
    if state.loopback_only {
        let host = request.headers().get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or_default();
        if !is_loopback_host(host) {
            return ApiError::new(
                StatusCode::FORBIDDEN,
                format!("`Host: {host}` is not a loopback name (use 127.0.0.1 or localhost, or serve with --token)"),
            )
            .into_response();
        }
    }
    if let Some(token) = &state.token {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if !given.is_some_and(|given| same_bytes(given.as_bytes(), token.as_bytes())) {
            let mut response =
                ApiError::new(StatusCode::UNAUTHORIZED, "this server needs an `Authorization: Bearer TOKEN` header")
                    .into_response();
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return response;
        }
    }
    next.run(request).await
}

/// `localhost`, `127.0.0.1`, `[::1]`…, with or without a port.
fn is_loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or_default(),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Equality in time independent of where the bytes differ.
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn page() -> Html<&'static str> {
    Html(include_str!("page.html"))
}

async fn health(State(state): State<Shared>) -> Json<Value> {
    Json(json!({
        "status": "ok",
        "version": env!("CARGO_PKG_VERSION"),
        "backend": state.backend,
        "stylecodes_version": state.info.version.to_string(),
    }))
}

/// One uploaded file: its name (as sent, else `image N`) and bytes.
struct Upload {
    name: String,
    bytes: Bytes,
}

/// The `image` fields of a form.
async fn uploads(multipart: Result<Multipart, MultipartRejection>, limit: usize) -> ApiResult<Vec<Upload>> {
    let mut multipart = multipart.map_err(|r| body_error(r.status(), r.body_text(), limit))?;
    let field_error = |e: MultipartError| body_error(e.status(), e.body_text(), limit);
    let mut files = Vec::new();
    while let Some(field) = multipart.next_field().await.map_err(field_error)? {
        if field.name() != Some("image") {
            continue;
        }
        let name = field.file_name().map(str::to_string).unwrap_or_else(|| format!("image {}", files.len() + 1));
        let bytes = field.bytes().await.map_err(field_error)?;
        files.push(Upload { name, bytes });
    }
    if files.is_empty() {
        return Err(ApiError::bad("the form has no `image` field"));
    }
    Ok(files)
}

async fn encode(
    State(state): State<Shared>,
    multipart: Result<Multipart, MultipartRejection>,
) -> ApiResult<Json<Value>> {
    let files = uploads(multipart, state.upload_limit).await?;
    let decoded = tokio::task::spawn_blocking(move || {
        files
            .into_iter()
            .map(|file| {
                let path = Path::new(&file.name);
                let image = decode_rgb(&file.bytes, path).map_err(ApiError::bad)?;
                let stored = read_png_text_bytes(&file.bytes, path)
                    .ok()
                    .and_then(|text| Recipe::stored_code(&text).map(str::to_string));
                Ok((file.name, image, stored))
            })
            .collect::<ApiResult<Vec<_>>>()
    })
    .await
    .map_err(ApiError::internal)??;
    let (reply, answer) = tokio::sync::oneshot::channel();
    let images = decoded.iter().map(|(_, image, _)| image.clone()).collect();
    state.work.send(Work::Encode { images, reply }).map_err(|_| worker_gone())?;
    let encoded = answer.await.map_err(|_| worker_gone())?.map_err(ApiError::internal)?;
    let codes: Vec<Value> = decoded
        .iter()
        .zip(encoded)
        .map(|((name, _, stored), style)| {
            let mut code = json!({
                "name": name,
                "code": style.code.format(CodeFormat::Paper),
                "official": style.code.format(CodeFormat::Official),
                "latent": style.latent,
            });
            if let Some(stored) = stored {
                code["stored_code"] = stored.as_str().into();
            }
            code
        })
        .collect();
    Ok(Json(json!({ "codes": codes })))
}

fn worker_gone() -> ApiError {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the model worker has stopped")
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CodeBody {
    code: String,
}

/// `{"code"}` as `stylecode inspect --json`, or an uploaded PNG's recipe.
async fn inspect(State(state): State<Shared>, request: Request) -> ApiResult<Json<Value>> {
    let is_form = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("multipart/form-data"));
    if is_form {
        let multipart = Multipart::from_request(request, &state).await;
        let file = uploads(multipart, state.upload_limit).await?.remove(0);
        let text = read_png_text_bytes(&file.bytes, Path::new(&file.name)).map_err(ApiError::bad)?;
        let recipe = Recipe::from_text_chunks(&text).map_err(|e| ApiError::bad(format!("{}: {e}", file.name)))?;
        return Ok(Json(json!({ "name": file.name, "recipe": recipe_json(&recipe) })));
    }
    let JsonBody(body) = JsonBody::<CodeBody>::from_request(request, &state).await?;
    Ok(Json(commands::inspect::json(&body.code).map_err(ApiError::bad)?))
}

/// A recipe as its PNG text chunks, one string per key.
fn recipe_json(recipe: &Recipe) -> Value {
    Value::Object(recipe.text_chunks().into_iter().map(|(key, value)| (key, value.into())).collect())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CodeWeight {
    code: String,
    #[serde(default = "one")]
    weight: f32,
}

fn one() -> f32 {
    1.0
}

/// Parsed as the CLI parses `CODE:WEIGHT`, with its checks and messages.
fn weighted_codes(codes: &[CodeWeight]) -> ApiResult<Vec<WeightedCode>> {
    codes.iter().map(|c| format!("{}:{}", c.code, c.weight).parse::<WeightedCode>().map_err(ApiError::bad)).collect()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MixBody {
    codes: Vec<CodeWeight>,
}

async fn mix(JsonBody(body): JsonBody<MixBody>) -> ApiResult<Json<Value>> {
    let code = commands::mix::mix(&weighted_codes(&body.codes)?).map_err(|e| ApiError::bad(format!("{e:#}")))?;
    Ok(Json(json!({ "code": code.format(CodeFormat::Paper), "official": code.format(CodeFormat::Official) })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RandomQuery {
    seed: Option<u64>,
}

/// A random code for the loaded weights' version.
async fn random(
    State(state): State<Shared>,
    query: Result<Query<RandomQuery>, QueryRejection>,
) -> ApiResult<Json<Value>> {
    let Query(query) = query.map_err(|r| ApiError::bad(r.body_text()))?;
    let code = commands::random::code(query.seed, state.info.version).map_err(ApiError::bad)?;
    Ok(Json(json!({ "code": code.format(CodeFormat::Paper), "official": code.format(CodeFormat::Official) })))
}

/// The `.safetensors` file names in the LoRA folder, sorted.
fn lora_names(dir: &Path) -> ApiResult<Vec<String>> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| ApiError::internal(format!("the LoRA folder {}: {}", dir.display(), e.kind())))?;
    let mut names: Vec<String> = entries
        .filter_map(|entry| entry.ok())
        .filter(|entry| entry.path().is_file())
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".safetensors") && !name.starts_with('.'))
        .collect();
    names.sort();
    Ok(names)
}

/// `{"loras": [{"name"}…]}`: the LoRAs `--loras` offers (none without it).
async fn loras(State(state): State<Shared>) -> ApiResult<Json<Value>> {
    let names = match &state.loras {
        Some(dir) => lora_names(dir)?,
        None => Vec::new(),
    };
    let loras: Vec<Value> = names.into_iter().map(|name| json!({ "name": name })).collect();
    Ok(Json(json!({ "loras": loras })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoraBody {
    name: String,
    #[serde(default = "one")]
    weight: f32,
    /// The text encoder's weight (the UNet's unless given).
    te_weight: Option<f32>,
}

/// The LoRAs a request names, each a file of the LoRA folder by its plain
/// name (no paths from HTTP).
fn lora_specs(loras: &[LoraBody], dir: Option<&Path>) -> ApiResult<Vec<LoraSpec>> {
    if loras.is_empty() {
        return Ok(Vec::new());
    }
    let Some(dir) = dir else {
        return Err(ApiError::bad("this server offers no LoRAs (start it with --loras DIR)"));
    };
    let names = lora_names(dir)?;
    loras
        .iter()
        .map(|lora| {
            if !names.contains(&lora.name) {
                return Err(ApiError::bad(format!(
                    "no LoRA `{}` in the LoRA folder (GET /api/loras lists them)",
                    lora.name
                )));
            }
            let te_weight = lora.te_weight.unwrap_or(lora.weight);
            if !(lora.weight.is_finite() && te_weight.is_finite()) {
                return Err(ApiError::bad(format!("LoRA `{}`: a weight is not a number", lora.name)));
            }
            Ok(LoraSpec { path: dir.join(&lora.name), unet_weight: lora.weight, text_encoder_weight: te_weight })
        })
        .collect()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GenerateBody {
    prompt: String,
    #[serde(default)]
    negative: String,
    #[serde(default)]
    styles: Vec<CodeWeight>,
    style_scale: Option<f64>,
    steps: Option<usize>,
    cfg: Option<f64>,
    seed: Option<u64>,
    width: Option<usize>,
    height: Option<usize>,
    num: Option<u32>,
    scheduler: Option<String>,
    #[serde(default)]
    karras: bool,
    #[serde(default)]
    loras: Vec<LoraBody>,
}

/// The request a body asks for, checked as `stylecode generate` checks it
/// (its memory too, as the worker runs it: one image at a time).
fn generate_request(body: GenerateBody, info: &WorkerInfo, lora_dir: Option<&Path>) -> ApiResult<GenerateRequest> {
    let mut settings = GenerateSettings { loras: lora_specs(&body.loras, lora_dir)?, ..GenerateSettings::default() };
    if let Some(steps) = body.steps {
        settings.steps = steps;
    }
    settings.guidance_scale = body.cfg;
    if let Some(name) = &body.scheduler {
        settings.scheduler = name.parse::<SchedulerKind>().map_err(ApiError::bad)?;
    }
    settings.karras = body.karras;
    if let Some(width) = body.width {
        settings.width = width;
    }
    if let Some(height) = body.height {
        settings.height = height;
    }
    if let Some(scale) = body.style_scale {
        settings.style_scale = scale;
    }
    settings.validate().map_err(ApiError::bad)?;
    let num = body.num.unwrap_or(1);
    if !(1..=MAX_IMAGES).contains(&num) {
        return Err(ApiError::bad(format!("num {num} is not between 1 and {MAX_IMAGES}")));
    }
    let codes = weighted_codes(&body.styles)?;
    let style = if codes.is_empty() {
        Style::None
    } else {
        let (_, version) = blend(&codes).map_err(ApiError::bad)?;
        if version != info.version {
            let mismatch =
                Error::VersionMismatch { code: version, weights: info.version, path: info.stylecodes_dir.clone() };
            return Err(ApiError::bad(mismatch));
        }
        Style::Codes(codes)
    };
    let first =
        ImageSpec { prompt: body.prompt, negative: body.negative, seed: body.seed.unwrap_or_else(rand::random), style };
    let request = GenerateRequest::repeated(first, num as usize, settings);
    if let Some(one) = request.batches(1).next() {
        info.memory.check(&one).map_err(ApiError::bad)?;
    }
    Ok(request)
}

async fn generate(State(state): State<Shared>, JsonBody(body): JsonBody<GenerateBody>) -> ApiResult<Response> {
    let request = generate_request(body, &state.info, state.loras.as_deref())?;
    let job = match state.table.submit(request) {
        Ok(job) => job,
        Err(QueueFull) => {
            let mut response =
                ApiError::new(StatusCode::TOO_MANY_REQUESTS, "the generation queue is full; try again shortly")
                    .into_response();
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_S));
            return Ok(response);
        }
    };
    if state.work.send(Work::Generate(job.clone())).is_err() {
        state.table.taken();
        let error = worker_gone();
        job.update(|status| {
            status.state = JobState::Failed;
            status.error = Some(error.message.clone());
        });
        return Err(error);
    }
    Ok((StatusCode::ACCEPTED, Json(json!({ "job": job.id }))).into_response())
}

fn find_job(table: &JobTable, id: &str) -> ApiResult<Arc<Job>> {
    id.parse()
        .ok()
        .and_then(|id| table.get(id))
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no job `{id}`")))
}

fn status_json(id: u64, status: &JobStatus) -> Value {
    let mut value = json!({
        "job": id,
        "state": status.state.name(),
        "image": status.image,
        "step": status.step,
        "steps": status.steps,
        "images": status.image_urls(),
        "recipes": status.recipes,
    });
    if let Some(error) = &status.error {
        value["error"] = error.as_str().into();
    }
    value
}

async fn job(State(state): State<Shared>, UrlPath(id): UrlPath<String>) -> ApiResult<Json<Value>> {
    let job = find_job(&state.table, &id)?;
    Ok(Json(status_json(job.id, &job.status())))
}

async fn cancel(State(state): State<Shared>, UrlPath(id): UrlPath<String>) -> ApiResult<Json<Value>> {
    let job = find_job(&state.table, &id)?;
    job.cancel();
    // A queued job is cancelled at once; a running one stops at its next step.
    job.update(|status| {
        if status.state == JobState::Queued {
            status.state = JobState::Cancelled;
        }
    });
    Ok(Json(status_json(job.id, &job.status())))
}

/// `progress` at every new step, `preview` at each new preview, then one of
/// `done`, `error` or `cancelled`.
async fn events(
    State(state): State<Shared>,
    UrlPath(id): UrlPath<String>,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    let job = find_job(&state.table, &id)?;
    let receiver = job.subscribe();
    // (receiver, last (image, step) sent, last preview's (image, step) sent, finished)
    let start = (receiver, None, None, false);
    let updates = stream::unfold(start, |(mut receiver, mut sent, mut previewed, finished)| async move {
        if finished {
            return None;
        }
        loop {
            let status = receiver.borrow_and_update().clone();
            let mut batch = Vec::new();
            let at = (status.image, status.step);
            if status.step > 0 && sent != Some(at) {
                sent = Some(at);
                let data = json!({ "step": status.step, "steps": status.steps, "image": status.image });
                batch.push(Event::default().event("progress").data(data.to_string()));
            }
            if let Some(preview) = status.preview.as_ref().filter(|p| previewed != Some((p.image, p.step))) {
                previewed = Some((preview.image, preview.step));
                let data =
                    json!({ "step": preview.step, "steps": status.steps, "image": preview.image, "url": preview.url });
                batch.push(Event::default().event("preview").data(data.to_string()));
            }
            let end = match status.state {
                JobState::Done => Some(("done", json!({ "images": status.image_urls(), "recipe": status.recipes }))),
                JobState::Failed => Some(("error", json!({ "error": status.error }))),
                JobState::Cancelled => Some(("cancelled", json!({ "images": status.image_urls() }))),
                JobState::Queued | JobState::Running => None,
            };
            if let Some((name, data)) = end {
                batch.push(Event::default().event(name).data(data.to_string()));
                return Some((batch, (receiver, sent, previewed, true)));
            }
            if !batch.is_empty() {
                return Some((batch, (receiver, sent, previewed, false)));
            }
            if receiver.changed().await.is_err() {
                return None;
            }
        }
    });
    let events = updates.flat_map(|batch| stream::iter(batch.into_iter().map(Ok)));
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
}

/// A PNG under the outputs folder, by its plain file name.
async fn image(State(state): State<Shared>, UrlPath(name): UrlPath<String>) -> ApiResult<Response> {
    let plain = !name.starts_with('.')
        && name.ends_with(".png")
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    let missing = || ApiError::new(StatusCode::NOT_FOUND, format!("no image `{name}`"));
    if !plain {
        return Err(missing());
    }
    let bytes = tokio::fs::read(state.outputs.join(&name)).await.map_err(|_| missing())?;
    Ok(([(header::CONTENT_TYPE, "image/png")], bytes).into_response())
}

#[cfg(test)]
mod tests {
    //! In process, through `oneshot`, with no model worker behind the
    //! routes: what they answer without one (the real server is tested in
    //! `tests/serve_api.rs`).
    use super::*;
    use axum::body::Body;
    use tower::ServiceExt;

    fn app(token: Option<&str>, upload_limit: usize) -> Router {
        let (work, _) = mpsc::channel(); // the receiver is gone: no worker
        router(Arc::new(AppState {
            work,
            table: Arc::new(JobTable::new(2)),
            info: WorkerInfo {
                version: '1',
                stylecodes_dir: PathBuf::from("weights/stylecodes"),
                memory: burn_stylecode::pipeline::memory::MemoryCheck {
                    sd15_dir: PathBuf::from("no-such-weights/sd15"),
                    style_weights: None,
                    dtype: burn::tensor::DType::F32,
                    max_memory: None,
                },
            },
            backend: "cpu".into(),
            outputs: PathBuf::from("no-such-outputs"),
            token: token.map(str::to_string),
            loopback_only: token.is_none(),
            upload_limit,
            loras: None,
        }))
    }

    async fn call(app: Router, method: &str, uri: &str, auth: Option<&str>, body: &str) -> (StatusCode, Value) {
        let mut request = Request::builder()
            .method(method)
            .uri(uri)
            .header("Host", "127.0.0.1:7860")
            .header("Content-Type", "application/json");
        if let Some(auth) = auth {
            request = request.header("Authorization", auth);
        }
        let response = app.oneshot(request.body(Body::from(body.to_string())).unwrap()).await.unwrap();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
        (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    fn run<T>(future: impl std::future::Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(future)
    }

    #[test]
    fn the_token_guards_every_api_route_but_not_the_page() {
        run(async {
            let app = app(Some("s3cret"), 1 << 20);
            for uri in ["/api/health", "/api/random", "/api/nothing"] {
                let (status, body) = call(app.clone(), "GET", uri, None, "").await;
                assert_eq!(status, StatusCode::UNAUTHORIZED, "{uri}");
                assert!(body["error"].as_str().unwrap().contains("Bearer"));
                let (status, _) = call(app.clone(), "GET", uri, Some("Bearer s3cre"), "").await;
                assert_eq!(status, StatusCode::UNAUTHORIZED, "{uri}");
            }
            let (status, body) = call(app.clone(), "GET", "/api/health", Some("Bearer s3cret"), "").await;
            assert_eq!((status, body["stylecodes_version"].as_str()), (StatusCode::OK, Some("1")));
            // Any Host: with a token, the header is the check.
            let request = Request::get("/api/health")
                .header("Host", "stylecode.example:7860")
                .header("Authorization", "Bearer s3cret")
                .body(Body::empty())
                .unwrap();
            assert_eq!(app.clone().oneshot(request).await.unwrap().status(), StatusCode::OK);
            let page = app.oneshot(Request::get("/").body(Body::empty()).unwrap()).await.unwrap();
            assert_eq!(page.status(), StatusCode::OK);
        });
    }

    #[test]
    fn without_a_token_only_loopback_names_and_json_bodies_get_in() {
        for (host, loopback) in [
            ("127.0.0.1:7860", true),
            ("localhost:7860", true),
            ("LOCALHOST", true),
            ("[::1]:7860", true),
            ("127.9.9.9", true),
            ("evil.example:7860", false),
            ("192.168.1.2:7860", false),
            ("localhost.evil.example", false),
            ("", false),
        ] {
            assert_eq!(is_loopback_host(host), loopback, "{host}");
        }
        run(async {
            let app = app(None, 1 << 20);
            let request = Request::get("/api/health").header("Host", "evil.example:7860").body(Body::empty()).unwrap();
            let response = app.clone().oneshot(request).await.unwrap();
            assert_eq!(response.status(), StatusCode::FORBIDDEN);
            // A cross-site form may send text/plain without asking; it is refused.
            let request = Request::post("/api/mix")
                .header("Host", "127.0.0.1:7860")
                .header("Content-Type", "text/plain")
                .body(Body::from(r#"{"codes":[]}"#))
                .unwrap();
            let response = app.oneshot(request).await.unwrap();
            assert_eq!(response.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
        });
    }

    #[test]
    fn routes_without_the_models_answer_and_errors_are_json() {
        run(async {
            let app = app(None, 64);
            let (status, body) = call(app.clone(), "GET", "/api/random?seed=1", None, "").await;
            assert_eq!(status, StatusCode::OK);
            let code = body["code"].as_str().unwrap().to_string();
            assert_eq!(code, commands::random::code(Some(1), '1').unwrap().to_paper());
            let (status, body) =
                call(app.clone(), "POST", "/api/mix", None, &format!(r#"{{"codes":[{{"code":"{code}"}}]}}"#)).await;
            assert_eq!((status, body["code"].as_str()), (StatusCode::OK, Some(code.as_str())));
            let (_, body) = call(app.clone(), "POST", "/api/inspect", None, &format!(r#"{{"code":"{code}"}}"#)).await;
            // Both read back from text: serde_json's reader may round a float by an ulp.
            let cli: Value = serde_json::from_str(&commands::inspect::json(&code).unwrap().to_string()).unwrap();
            assert_eq!(body, cli);

            for (method, uri, body, status, needle) in [
                ("POST", "/api/mix", "{not json", StatusCode::BAD_REQUEST, "JSON"),
                ("POST", "/api/mix", &"x".repeat(100), StatusCode::PAYLOAD_TOO_LARGE, "--upload-limit"),
                (
                    "POST",
                    "/api/generate",
                    r#"{"prompt":"x","width":16,"height":16}"#,
                    StatusCode::SERVICE_UNAVAILABLE,
                    "worker",
                ),
                (
                    "POST",
                    "/api/generate",
                    r#"{"prompt":"x","cfg":1,"scheduler":"ddim","karras":true}"#,
                    StatusCode::BAD_REQUEST,
                    "Karras",
                ),
                ("GET", "/api/jobs/7", "", StatusCode::NOT_FOUND, "no job `7`"),
                ("GET", "/api/images/.hidden.png", "", StatusCode::NOT_FOUND, ".hidden.png"),
                ("GET", "/elsewhere", "", StatusCode::NOT_FOUND, "no such route"),
            ] {
                let (got, reply) = call(app.clone(), method, uri, None, body).await;
                assert_eq!(got, status, "{uri}: {reply}");
                let error = reply["error"].as_str().unwrap();
                assert!(error.contains(needle), "{uri}: `{needle}` not in {error}");
            }
            // The job the worker never got is failed, and holds no queue place.
            let (_, job) = call(app.clone(), "GET", "/api/jobs/1", None, "").await;
            assert_eq!(
                (job["state"].as_str(), job["error"].as_str()),
                (Some("failed"), Some("the model worker has stopped"))
            );
            for _ in 0..3 {
                let (status, _) = call(app.clone(), "POST", "/api/generate", None, r#"{"prompt":"x"}"#).await;
                assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "not 429");
            }
        });
    }
}
