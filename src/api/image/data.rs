//! Image data: upload (streamed to the image store, back to `queued` on any failure) and download.

use super::*;

pub(super) async fn upload(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<StatusCode> {
    let img = load_owned(&state, &auth, &id)?;
    // glance takes image data only as application/octet-stream, and says so with a 415.
    let ctype = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
    let media = ctype.and_then(|c| c.split(';').next()).map(str::trim);
    if !media.is_some_and(|m| m.eq_ignore_ascii_case("application/octet-stream")) {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("Invalid content type {}", ctype.unwrap_or("None")),
        ));
    }
    let limit_mb = state.config.images.max_upload_mb;
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("Image exceeds the size limit of {limit_mb} MiB (`[images] max_upload_mb`)."),
        )
    };
    let declared =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit_mb.saturating_mul(1024 * 1024)) {
        return Err(too_large());
    }
    if !img.status.can_upload() || !state.db.with(|db| db.set_image_status(&id, img.status, ImageStatus::Saving))? {
        return Err(ApiError::conflict(format!(
            "Image status transition from {} to {} is not allowed",
            img.status,
            ImageStatus::Saving
        )));
    }

    // From here on, any way out but success (an error, or the client going away, which drops
    // this future) puts the image back to queued so the client can simply try again; the
    // writer removes its partial file the same way.
    let saving = BackToQueued { state: &state, id: &id, armed: true };
    let result = store_body(&state, &id, body, img.disk_format.clone(), limit_mb).await;
    let data = match result {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(image_id = %id, error = %e, "image upload failed");
            return Err(match e {
                ImageError::TooLarge { .. } => too_large(),
                ImageError::Read { .. } => bad(format!("Error reading the image data: {e}")),
                other => ApiError::internal(other.to_string()),
            });
        }
    };
    let finished = state.db.with(|db| db.finish_image_upload(&id, &data));
    if !matches!(finished, Ok(true)) {
        let _ = store::remove_file(&state.home, &data.path);
        finished?;
        return Err(ApiError::new(StatusCode::GONE, format!("Image {id} was deleted during the upload.")));
    }
    saving.disarm();
    tracing::info!(image_id = %id, size = data.size, checksum = %data.md5, "image data stored");
    Ok(StatusCode::NO_CONTENT)
}

/// Returns a `saving` image to `queued` when dropped armed.
pub(super) struct BackToQueued<'a> {
    state: &'a AppState,
    id: &'a str,
    armed: bool,
}

impl BackToQueued<'_> {
    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for BackToQueued<'_> {
    fn drop(&mut self) {
        if self.armed {
            if let Err(e) =
                self.state.db.with(|db| db.set_image_status(self.id, ImageStatus::Saving, ImageStatus::Queued))
            {
                tracing::error!(image_id = %self.id, error = %e, "could not return a failed upload to queued");
            }
        }
    }
}

/// Streams the request body into the store. File writes and hashing run on the blocking pool,
/// one chunk at a time, so a large upload never stalls the runtime.
pub(super) async fn store_body(
    state: &AppState,
    id: &str,
    body: Body,
    disk_format: Option<String>,
    limit_mb: u64,
) -> Result<crate::db::images::StoredData, ImageError> {
    let images_dir = state.home.images_dir();
    let mut writer = ImageWriter::create(&images_dir, id, limit_mb)?;
    let mut stream = body.into_data_stream();
    let read_err = |e: axum::Error| ImageError::Read {
        path: "the request body".into(),
        source: std::io::Error::other(e.to_string()),
    };
    let join_err = |e: tokio::task::JoinError| ImageError::Write {
        path: images_dir.clone(),
        source: std::io::Error::other(e.to_string()),
    };
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(read_err)?;
        writer =
            tokio::task::spawn_blocking(move || writer.write(&chunk).map(|_| writer)).await.map_err(join_err)??;
    }
    tokio::task::spawn_blocking(move || writer.finish(disk_format.as_deref())).await.map_err(join_err)?
}

pub(super) async fn download(State(state): State<AppState>, auth: Auth, Path(id): Path<String>) -> ApiResult<Response> {
    let img = load_visible(&state, &auth, &id)?;
    let Some(path) = store::file_path(&state.home, &img) else {
        // glance answers 204 for an image without data.
        return Ok(StatusCode::NO_CONTENT.into_response());
    };
    let file = tokio::fs::File::open(&path).await.map_err(|e| {
        tracing::error!(image_id = %id, path = %path.display(), error = %e, "image data file missing");
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, format!("The data of image {id} is not available."))
    })?;
    let stream = futures_util::stream::unfold(file, |mut f| async move {
        use tokio::io::AsyncReadExt;
        let mut buf = vec![0u8; 256 * 1024];
        match f.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok::<_, std::io::Error>(Bytes::from(buf)), f))
            }
            Err(e) => Some((Err(e), f)),
        }
    });
    let mut resp = Body::from_stream(stream).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/octet-stream"));
    if let Some(size) = img.size {
        h.insert(header::CONTENT_LENGTH, size.into());
    }
    // glance sends the md5 hex digest here (not base64 as RFC 1864 would have it).
    if let Some(md5) = img.checksum.as_deref().and_then(|c| header::HeaderValue::from_str(c).ok()) {
        h.insert("content-md5", md5);
    }
    Ok(resp)
}
