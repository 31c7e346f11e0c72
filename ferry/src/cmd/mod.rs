//! One module per subcommand.

pub(crate) mod agent;
pub(crate) mod check;
pub(crate) mod generate;
pub(crate) mod instance;
pub(crate) mod keygen;
pub(crate) mod pair;
pub(crate) mod point;
pub(crate) mod rebuild;
pub(crate) mod replication;
pub(crate) mod retention;
pub(crate) mod seed;
pub(crate) mod server;
pub(crate) mod standby;
pub(crate) mod tls;
pub(crate) mod track;

/// Deletes what `path` names through the control API and says `done` (or prints the
/// answer, with `--json`).
pub(crate) fn delete(
    control: &crate::api::client::ControlArgs,
    path: &str,
    done: &str,
) -> anyhow::Result<()> {
    let answer: serde_json::Value = control.connect()?.delete(path)?;
    if control.json {
        println!("{answer}");
    } else {
        println!("{done}");
    }
    Ok(())
}

/// Prints rows under a header, each column as wide as its widest cell.
pub(crate) fn table(header: &[&str], rows: impl IntoIterator<Item = Vec<String>>) {
    let rows: Vec<Vec<String>> = rows.into_iter().collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let text: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", text.join("  ").trim_end());
    };
    line(header.to_vec());
    for row in &rows {
        line(row.iter().map(String::as_str).collect());
    }
}

/// A duration for people, to the unit that matters: `45 s`, `12 min`, `3 h 20 min`.
pub(crate) fn human_secs(secs: u64) -> String {
    match secs {
        0..120 => format!("{secs} s"),
        120..7200 => format!("{} min", secs.div_ceil(60)),
        _ => format!("{} h {} min", secs / 3600, secs % 3600 / 60),
    }
}

/// Bytes for people: `512 B`, `1.5 MiB`.
#[expect(clippy::cast_precision_loss, reason = "display only")]
pub(crate) fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}
