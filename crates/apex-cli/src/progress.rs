//! Per-blob progress bars for pull and push (hidden when stderr is not a terminal).

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::{Arc, Mutex};

use apex_oci::store::{Progress, ProgressFn};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Builds a progress sink, or `None` when quiet or not on a terminal.
pub fn bars(quiet: bool, verb: &'static str) -> Option<ProgressFn> {
    if quiet || !std::io::stderr().is_terminal() {
        return None;
    }
    let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
    let style = ProgressStyle::with_template(
        "{prefix:.bold} {msg:<12} [{bar:30}] {bytes:>10}/{total_bytes:<10} {bytes_per_sec}",
    )
    .expect("static template")
    .progress_chars("=> ");
    let bars: Mutex<HashMap<String, ProgressBar>> = Mutex::new(HashMap::new());
    Some(Arc::new(move |p: Progress| {
        let mut bars = bars.lock().expect("progress lock");
        match p {
            Progress::Resolved { digest, layers } => {
                let _ = multi.println(format!("{verb} {digest} ({layers} layers)"));
            }
            Progress::BlobStart {
                digest,
                size,
                cached,
            } => {
                let pb = multi.add(ProgressBar::new(size));
                pb.set_style(style.clone());
                pb.set_prefix(digest.short().to_string());
                if cached {
                    pb.set_position(size);
                    pb.finish_with_message("exists");
                } else {
                    pb.set_message(verb.to_lowercase());
                }
                bars.insert(digest.to_string(), pb);
            }
            Progress::BlobBytes { digest, done } => {
                if let Some(pb) = bars.get(&digest.to_string()) {
                    pb.set_position(done);
                }
            }
            Progress::BlobDone { digest } => {
                if let Some(pb) = bars.get(&digest.to_string()) {
                    if !pb.is_finished() {
                        pb.set_position(pb.length().unwrap_or(0));
                        pb.finish_with_message("done");
                    }
                }
            }
            Progress::Unpacking => {
                let _ = multi.println("building root filesystem image");
            }
        }
    }))
}
