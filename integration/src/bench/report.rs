//! What the benchmark scenarios hand back: a printable table and CSV files
//! (and, for cold sync, an SVG plot), plus the helpers to write them and
//! the goal summary of `flannel-bench all`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A scenario's result: the table `flannel-bench` prints and the files it
/// writes into the output directory.
pub trait BenchResult {
    /// The table, as printed (ends with a newline).
    fn table(&self) -> String;
    /// `(file name, contents)` of every file to write.
    fn files(&self) -> Vec<(String, String)>;
    /// Part of the scenario failed although a result exists (e.g. one
    /// cold-sync size): what failed.
    fn error(&self) -> Option<String> {
        None
    }
}

/// Writes `result`'s files into `dir` (created if missing) and returns
/// their paths.
pub fn write_files(dir: &Path, result: &dyn BenchResult) -> Result<Vec<PathBuf>, String> {
    let mut written = Vec::new();
    for (name, contents) in result.files() {
        written.push(write_file(dir, &name, &contents)?);
    }
    Ok(written)
}

/// Writes one file into `dir` (created if missing).
pub fn write_file(dir: &Path, name: &str, contents: &str) -> Result<PathBuf, String> {
    std::fs::create_dir_all(dir)
        .map_err(|e| format!("cannot create the output directory {}: {e}", dir.display()))?;
    let path = dir.join(name);
    std::fs::write(&path, contents).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(path)
}

/// A CSV document (RFC 4180 quoting, `\n` line ends).
#[derive(Debug, Clone, Default)]
pub struct Csv {
    text: String,
}

impl Csv {
    /// A document with this header row.
    pub fn new(header: &[&str]) -> Csv {
        let mut csv = Csv::default();
        csv.row(header.iter().map(|h| h.to_string()));
        csv
    }

    /// Appends a row.
    pub fn row<I: IntoIterator<Item = String>>(&mut self, cells: I) {
        let cells: Vec<String> = cells.into_iter().map(|c| quote(&c)).collect();
        self.text += &cells.join(",");
        self.text.push('\n');
    }

    /// The document.
    pub fn into_text(self) -> String {
        self.text
    }
}

fn quote(cell: &str) -> String {
    if cell.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", cell.replace('"', "\"\""))
    } else {
        cell.to_string()
    }
}

/// A number with `decimals` decimals (no thousands separators).
pub fn num(value: f64, decimals: usize) -> String {
    format!("{value:.decimals$}")
}

/// A number, or an empty cell.
pub fn opt(value: Option<f64>, decimals: usize) -> String {
    value.map(|v| num(v, decimals)).unwrap_or_default()
}

/// Every run of a scenario at one size (peer count), and what stopped it.
#[derive(Debug, Clone)]
pub struct SizeRuns<R> {
    /// Peers in the API server.
    pub peers: u32,
    /// Runs asked for.
    pub runs_wanted: usize,
    /// Runs that completed.
    pub runs: Vec<R>,
    /// What failed at this size, if anything.
    pub error: Option<String>,
}

impl<R> SizeRuns<R> {
    /// The table line for a size that failed (`None` when it did not).
    pub fn failure_line(&self) -> Option<String> {
        self.error.as_ref().map(|error| {
            format!(
                "{:>7} FAILED after {} of {} run(s): {error}",
                self.peers,
                self.runs.len(),
                self.runs_wanted
            )
        })
    }

    /// No runs yet at `peers`, `runs_wanted` of them asked for.
    pub fn new(peers: u32, runs_wanted: usize) -> Self {
        SizeRuns {
            peers,
            runs_wanted,
            runs: Vec::new(),
            error: None,
        }
    }

    /// The median of `f` over the completed runs.
    pub fn median_of(&self, f: impl Fn(&R) -> f64) -> Option<f64> {
        median_of(&self.runs, f)
    }

    /// Records how measuring this size ended: an error or a panic is the
    /// size's error (the runs before it stay).
    pub fn finish(&mut self, outcome: std::thread::Result<Result<(), String>>) {
        self.error = match outcome {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e),
            Err(panic) => Some(super::panic_message(panic.as_ref())),
        };
    }
}

/// "3 run(s)", or the runs per size when they differ.
pub fn runs_label<R>(sizes: &[SizeRuns<R>]) -> String {
    let first = sizes.first().map_or(1, |s| s.runs_wanted);
    if sizes.iter().all(|s| s.runs_wanted == first) {
        format!("{first} run(s)")
    } else {
        let each: Vec<String> = sizes
            .iter()
            .map(|s| format!("{}: {}", thousands(s.peers.into()), s.runs_wanted))
            .collect();
        format!("runs per size {}", each.join(", "))
    }
}

/// An iperf3 scenario's closing lines: with more than one run, each run's
/// `(overlay, underlay, ratio %)` in `unit` (`1e9, "Gbit/s", 2` or
/// `1e6, "Mbit/s", 0`) on one line headed `label`; then what the teardown
/// could not remove, if anything.
pub fn runs_and_teardown(
    out: &mut String,
    label: &str,
    runs: &[(f64, f64, f64)],
    (divisor, unit, decimals): (f64, &str, usize),
    teardown_problems: &[String],
) {
    use std::fmt::Write as _;
    if runs.len() > 1 {
        let each: Vec<String> = runs
            .iter()
            .map(|(overlay, underlay, ratio)| {
                format!(
                    "{:.d$}/{:.d$} {unit} {ratio:.1}%",
                    overlay / divisor,
                    underlay / divisor,
                    d = decimals
                )
            })
            .collect();
        let _ = writeln!(out, "  runs ({label}): {}", each.join("; "));
    }
    if !teardown_problems.is_empty() {
        let _ = writeln!(out, "  teardown problems: {}", teardown_problems.join("; "));
    }
}

/// The median of `f` over `runs`, `None` when there are none.
pub fn median_of<T>(runs: &[T], f: impl Fn(&T) -> f64) -> Option<f64> {
    if runs.is_empty() {
        return None;
    }
    let values: Vec<f64> = runs.iter().map(f).collect();
    Some(median(&values))
}

/// Median (mean of the middle two for an even count); 0 for no values.
pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(|a, b| a.total_cmp(b));
    let mid = sorted.len() / 2;
    match (sorted.len() % 2, sorted.get(mid)) {
        (_, None) => 0.0,
        (1, Some(v)) => *v,
        (_, Some(v)) => (sorted[mid - 1] + v) / 2.0,
    }
}

/// p-th percentile (nearest rank) of sorted values; 0 for none.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// `1,000`-style thousands separators.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The machine, for titles: `2 cores (nproc), Linux 6.1.0-18-amd64`.
pub fn machine() -> String {
    let run = |program: &str, args: &[&str]| -> Option<String> {
        Command::new(program)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .filter(|s| !s.is_empty())
    };
    let cores = run("nproc", &[]).unwrap_or_else(|| "? cores".into());
    let kernel = run("uname", &["-r"]).unwrap_or_else(|| "?".into());
    format!("{cores} cores (nproc), Linux {kernel}")
}

// ------------------------------------------------------------------- goals

/// How a goal came out.
#[derive(Debug, Clone, PartialEq)]
pub enum Status {
    /// Measured and within the goal.
    Met,
    /// Measured and outside the goal.
    NotMet,
    /// The scenario that measures it failed (with its error).
    Failed(String),
    /// Measured, no goal attached.
    Measured,
}

impl Status {
    /// Met or not met from a check.
    pub fn check(ok: bool) -> Status {
        if ok {
            Status::Met
        } else {
            Status::NotMet
        }
    }

    fn label(&self) -> &'static str {
        match self {
            Status::Met => "met",
            Status::NotMet => "NOT met",
            Status::Failed(_) => "FAILED",
            Status::Measured => "-",
        }
    }
}

/// One row of the summary.
#[derive(Debug, Clone)]
pub struct Goal {
    /// Scenario that measures it (`cold-sync`, ...).
    pub scenario: String,
    /// What is measured.
    pub name: String,
    /// The goal (`<= 1.0x`, ...).
    pub target: String,
    /// The measured figure, as text.
    pub figure: String,
    /// Met, not met, or failed.
    pub status: Status,
}

impl Goal {
    /// A goal whose scenario failed with `error`.
    pub fn failed(scenario: &str, name: &str, target: &str, error: &str) -> Goal {
        Goal {
            scenario: scenario.into(),
            name: name.into(),
            target: target.into(),
            figure: "-".into(),
            status: Status::Failed(error.into()),
        }
    }
}

/// How one scenario of `flannel-bench all` ran.
#[derive(Debug, Clone)]
pub struct ScenarioRun {
    /// Scenario name (`cold-sync`, ...).
    pub name: String,
    /// Wall time, seconds.
    pub seconds: f64,
    /// What failed, if anything.
    pub error: Option<String>,
}

/// The summary table: goals, then the scenarios' wall times and failures.
pub fn summary_table(goals: &[Goal], runs: &[ScenarioRun], total_seconds: f64) -> String {
    let rows: Vec<[String; 4]> = goals
        .iter()
        .map(|goal| {
            let mut result = goal.status.label().to_string();
            if let Status::Failed(error) = &goal.status {
                result += &format!(": {}", shorten(error, 100));
            }
            [
                goal.name.clone(),
                goal.target.clone(),
                goal.figure.clone(),
                result,
            ]
        })
        .collect();
    let header = ["goal", "target", "measured", "result"].map(String::from);
    let width = |column: usize| {
        rows.iter()
            .chain(std::iter::once(&header))
            .map(|r| r[column].chars().count())
            .max()
            .unwrap_or(0)
    };
    let (w0, w1, w2) = (width(0), width(1), width(2));
    let mut out = String::new();
    let _ = writeln!(out, "summary ({})", machine());
    for row in std::iter::once(&header).chain(rows.iter()) {
        let _ = writeln!(
            out,
            "  {:<w0$}  {:<w1$}  {:<w2$}  {}",
            row[0], row[1], row[2], row[3]
        );
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "  {:<12} {:>8}  result", "scenario", "wall s");
    for run in runs {
        let result = match &run.error {
            None => "ok".to_string(),
            Some(error) => format!("FAILED: {}", shorten(error, 160)),
        };
        let _ = writeln!(out, "  {:<12} {:>8.1}  {result}", run.name, run.seconds);
    }
    let failed = runs.iter().filter(|r| r.error.is_some()).count();
    let met = goals.iter().filter(|g| g.status == Status::Met).count();
    let with_goal = goals
        .iter()
        .filter(|g| g.status != Status::Measured)
        .count();
    let _ = writeln!(
        out,
        "  {met} of {with_goal} goals met; {failed} scenario(s) failed; total wall time {:.1} s ({})",
        total_seconds,
        minutes(total_seconds)
    );
    out
}

/// `summary.csv`: one row per goal, then one per scenario.
pub fn summary_csv(goals: &[Goal], runs: &[ScenarioRun]) -> String {
    let mut csv = Csv::new(&[
        "kind", "scenario", "goal", "target", "measured", "result", "error",
    ]);
    for goal in goals {
        let error = match &goal.status {
            Status::Failed(error) => error.clone(),
            _ => String::new(),
        };
        csv.row([
            "goal".into(),
            goal.scenario.clone(),
            goal.name.clone(),
            goal.target.clone(),
            goal.figure.clone(),
            goal.status.label().into(),
            error,
        ]);
    }
    for run in runs {
        csv.row([
            "scenario".into(),
            run.name.clone(),
            String::new(),
            String::new(),
            format!("{:.1} s wall", run.seconds),
            if run.error.is_some() { "FAILED" } else { "ok" }.into(),
            run.error.clone().unwrap_or_default(),
        ]);
    }
    csv.into_text()
}

fn minutes(seconds: f64) -> String {
    let whole = seconds.round() as u64;
    format!("{}m{:02}s", whole / 60, whole % 60)
}

/// The first `max` characters of the first line of `text`.
pub fn shorten(text: &str, max: usize) -> String {
    let line = text.lines().next().unwrap_or_default();
    let mut short: String = line.chars().take(max).collect();
    if short.len() < text.len() {
        short += " ...";
    }
    short
}

// -------------------------------------------------------------------- SVG

/// Marker drawn at each point of a series.
#[derive(Debug, Clone, Copy)]
pub enum Marker {
    /// Filled circle.
    Circle,
    /// Filled square.
    Square,
    /// Filled triangle, point up.
    Triangle,
}

/// One line of a plot.
#[derive(Debug, Clone)]
pub struct Series {
    /// Legend text.
    pub label: String,
    /// Stroke and fill colour (`#1f77b4`).
    pub color: String,
    /// Point marker.
    pub marker: Marker,
    /// `(x, y)` points, drawn in x order.
    pub points: Vec<(f64, f64)>,
}

/// A "nice" axis step (1, 2 or 5 times a power of ten) for about
/// `ticks` intervals up to `max`.
fn nice_step(max: f64, ticks: f64) -> f64 {
    if max <= 0.0 || !max.is_finite() {
        return 1.0;
    }
    let raw = max / ticks;
    let power = 10f64.powf(raw.log10().floor());
    let fraction = raw / power;
    let nice = if fraction <= 1.0 {
        1.0
    } else if fraction <= 2.0 {
        2.0
    } else if fraction <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * power
}

fn escape_xml(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Tick label: integers with thousands separators, else up to 3 decimals.
fn tick_label(value: f64, step: f64) -> String {
    if step >= 1.0 && value.fract() == 0.0 {
        thousands(value as u64)
    } else {
        let decimals = (-step.log10().floor()).clamp(0.0, 3.0) as usize;
        format!("{value:.decimals$}")
    }
}

/// A line plot (both axes linear from 0) with markers, ticks, axis labels,
/// a legend and a title, as SVG text.
pub fn line_plot(title: &str, x_label: &str, y_label: &str, series: &[Series]) -> String {
    let (width, height) = (760.0, 480.0);
    let (left, right, top, bottom) = (80.0, 30.0, 60.0, 60.0);
    let plot_w = width - left - right;
    let plot_h = height - top - bottom;
    let points = series.iter().flat_map(|s| s.points.iter());
    let (x_max, y_max) = points.fold((0.0f64, 0.0f64), |(x, y), p| (x.max(p.0), y.max(p.1)));
    let x_step = nice_step(x_max, 5.0);
    let y_step = nice_step(y_max, 6.0);
    let x_top = (x_max / x_step).ceil().max(1.0) * x_step;
    let y_top = (y_max / y_step).ceil().max(1.0) * y_step;
    let sx = |x: f64| left + x / x_top * plot_w;
    let sy = |y: f64| top + plot_h - y / y_top * plot_h;

    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        svg,
        r#"<rect x="0" y="0" width="{width}" height="{height}" fill="white"/>"#
    );
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="28" text-anchor="middle" font-size="15" font-weight="bold">{}</text>"#,
        width / 2.0,
        escape_xml(title)
    );
    // Grid, ticks and tick labels.
    let mut x = 0.0;
    while x <= x_top + x_step / 2.0 {
        let px = sx(x);
        let _ = writeln!(
            svg,
            r##"<line x1="{px:.1}" y1="{top}" x2="{px:.1}" y2="{:.1}" stroke="#e4e4e4"/>"##,
            top + plot_h
        );
        let _ = writeln!(
            svg,
            r##"<line x1="{px:.1}" y1="{:.1}" x2="{px:.1}" y2="{:.1}" stroke="#333"/>"##,
            top + plot_h,
            top + plot_h + 5.0
        );
        let _ = writeln!(
            svg,
            r#"<text x="{px:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            top + plot_h + 19.0,
            tick_label(x, x_step)
        );
        x += x_step;
    }
    let mut y = 0.0;
    while y <= y_top + y_step / 2.0 {
        let py = sy(y);
        let _ = writeln!(
            svg,
            r##"<line x1="{left}" y1="{py:.1}" x2="{:.1}" y2="{py:.1}" stroke="#e4e4e4"/>"##,
            left + plot_w
        );
        let _ = writeln!(
            svg,
            r##"<line x1="{:.1}" y1="{py:.1}" x2="{left}" y2="{py:.1}" stroke="#333"/>"##,
            left - 5.0
        );
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
            left - 8.0,
            py + 4.0,
            tick_label(y, y_step)
        );
        y += y_step;
    }
    // Axes and their labels.
    let _ = writeln!(
        svg,
        r##"<path d="M{left},{top} V{:.1} H{:.1}" fill="none" stroke="#333"/>"##,
        top + plot_h,
        left + plot_w
    );
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
        left + plot_w / 2.0,
        height - 14.0,
        escape_xml(x_label)
    );
    let _ = writeln!(
        svg,
        r#"<text x="20" y="{:.1}" text-anchor="middle" transform="rotate(-90 20 {:.1})">{}</text>"#,
        top + plot_h / 2.0,
        top + plot_h / 2.0,
        escape_xml(y_label)
    );
    // Lines and markers.
    for s in series {
        let mut points = s.points.clone();
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
        let path: Vec<String> = points
            .iter()
            .map(|(x, y)| format!("{:.1},{:.1}", sx(*x), sy(*y)))
            .collect();
        let _ = writeln!(
            svg,
            r#"<polyline points="{}" fill="none" stroke="{}" stroke-width="2"/>"#,
            path.join(" "),
            s.color
        );
        for (x, y) in &points {
            let tip = format!("{}: {} -> {y:.3}", s.label, thousands(*x as u64));
            svg += &marker(s.marker, sx(*x), sy(*y), &s.color, &tip);
        }
    }
    // Legend, top left inside the plot.
    let (lx, ly) = (left + 16.0, top + 14.0);
    let _ = writeln!(
        svg,
        r##"<rect x="{:.1}" y="{:.1}" width="330" height="{:.1}" fill="white" stroke="#999"/>"##,
        lx - 8.0,
        ly - 10.0,
        series.len() as f64 * 20.0 + 6.0
    );
    for (i, s) in series.iter().enumerate() {
        let y = ly + 20.0 * i as f64 + 4.0;
        let _ = writeln!(
            svg,
            r#"<line x1="{lx:.1}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="{}" stroke-width="2"/>"#,
            lx + 30.0,
            s.color
        );
        svg += &marker(s.marker, lx + 15.0, y, &s.color, &s.label);
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}">{}</text>"#,
            lx + 38.0,
            y + 4.0,
            escape_xml(&s.label)
        );
    }
    svg += "</svg>\n";
    svg
}

/// A marker with a tooltip.
fn marker(kind: Marker, x: f64, y: f64, color: &str, tip: &str) -> String {
    let shape = match kind {
        Marker::Circle => format!(r#"circle cx="{x:.1}" cy="{y:.1}" r="4.5""#),
        Marker::Square => format!(
            r#"rect x="{:.1}" y="{:.1}" width="8" height="8""#,
            x - 4.0,
            y - 4.0
        ),
        Marker::Triangle => format!(
            r#"polygon points="{:.1},{:.1} {:.1},{:.1} {:.1},{:.1}""#,
            x,
            y - 5.5,
            x - 5.0,
            y + 4.0,
            x + 5.0,
            y + 4.0
        ),
    };
    let element = shape.split(' ').next().unwrap_or("circle");
    format!(
        "<{shape} fill=\"{color}\"><title>{}</title></{element}>\n",
        escape_xml(tip)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quotes_what_needs_it() {
        let mut csv = Csv::new(&["a", "b"]);
        csv.row(["1".to_string(), "x, \"y\"".to_string()]);
        assert_eq!(csv.into_text(), "a,b\n1,\"x, \"\"y\"\"\"\n");
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[]), 0.0);
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
    }

    #[test]
    fn summary_names_failures() {
        let goals = [
            Goal {
                scenario: "cni".into(),
                name: "CNI overhead".into(),
                target: "<= 2 ms".into(),
                figure: "+1.00 ms".into(),
                status: Status::Met,
            },
            Goal::failed(
                "events",
                "event latency",
                "<= 50 ms",
                "the agent exited\nmore",
            ),
        ];
        let runs = [ScenarioRun {
            name: "events".into(),
            seconds: 1.0,
            error: Some("the agent exited".into()),
        }];
        let table = summary_table(&goals, &runs, 61.0);
        assert!(table.contains("FAILED: the agent exited ..."), "{table}");
        assert!(
            table.contains("1 of 2 goals met; 1 scenario(s) failed"),
            "{table}"
        );
        assert!(table.contains("1m01s"), "{table}");
        let csv = summary_csv(&goals, &runs);
        assert!(csv.contains("\"the agent exited\nmore\""), "{csv}");
    }

    #[test]
    fn nice_steps() {
        assert_eq!(nice_step(20000.0, 5.0), 5000.0);
        assert_eq!(nice_step(5.8, 6.0), 1.0);
        assert_eq!(nice_step(1.05, 6.0), 0.2);
        assert_eq!(thousands(20000), "20,000");
        assert_eq!(thousands(999), "999");
    }

    #[test]
    fn plot_is_one_svg_document() {
        let svg = line_plot(
            "t <1>",
            "x",
            "y",
            &[Series {
                label: "a & b".into(),
                color: "#000".into(),
                marker: Marker::Circle,
                points: vec![(1000.0, 0.1), (20000.0, 1.2)],
            }],
        );
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("t &lt;1&gt;") && svg.contains("a &amp; b"));
        assert!(svg.contains("20,000"));
    }
}
