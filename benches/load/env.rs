//! What the benchmark needs installed, and what it says about the machine it ran on.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::Error;
use crate::procs::{output, which};

/// The programs the benchmark drives.
pub struct Tools {
    pub wrk: PathBuf,
    pub nginx: PathBuf,
    /// For the profile section; optional (Debian's `linux-perf`).
    pub perf: Option<PathBuf>,
}

/// Finds wrk and nginx, installing the missing ones from Debian's packages.
pub fn tools(may_install: bool) -> Result<Tools, Error> {
    let missing: Vec<&str> = ["wrk", "nginx"]
        .into_iter()
        .filter(|p| which(p).is_none())
        .collect();
    if !missing.is_empty() {
        if !may_install {
            return Err(format!(
                "{} not installed (apt-get install {}); run without --no-install to install",
                missing.join(" and "),
                missing.join(" ")
            )
            .into());
        }
        install(&missing)?;
    }
    let found = |p: &str| which(p).ok_or_else(|| format!("{p} still not found after installing"));
    Ok(Tools {
        wrk: found("wrk")?,
        nginx: found("nginx")?,
        perf: which("perf").filter(|perf| {
            // Debian's /usr/bin/perf is a wrapper that fails when no perf matches the kernel.
            Command::new(perf)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        }),
    })
}

/// `apt-get install` (as root, or through `sudo -n`); `apt-get update` first if that fails.
fn install(packages: &[&str]) -> Result<(), Error> {
    println!(
        "load bench: installing {} from Debian's packages",
        packages.join(" ")
    );
    let root = output("id", ["-u"]).as_deref() == Some("0");
    let apt = |args: &[&str]| -> bool {
        let mut command = if root {
            Command::new("apt-get")
        } else {
            let mut c = Command::new("sudo");
            c.args(["-n", "apt-get"]);
            c
        };
        command
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .is_ok_and(|s| s.success())
    };
    let mut args = vec!["install", "-y", "-q", "--no-install-recommends"];
    args.extend_from_slice(packages);
    if apt(&args) || (apt(&["update", "-q"]) && apt(&args)) {
        Ok(())
    } else {
        Err(format!(
            "could not install {} (apt-get install {} as root)",
            packages.join(" "),
            packages.join(" ")
        )
        .into())
    }
}

/// The machine, as BENCHMARKS.md names it.
pub struct Machine {
    pub cores: usize,
    pub cpu: String,
    pub memory_gib: f64,
    pub kernel: String,
    pub os: String,
}

pub fn machine() -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown".into(), |(_, v)| v.trim().to_owned());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let memory_kib: f64 = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    let os = std::fs::read_to_string("/etc/os-release")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map_or("unknown".into(), |v| v.trim_matches('"').to_owned());
    Machine {
        cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu,
        memory_gib: memory_kib / 1024.0 / 1024.0,
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map_or("unknown".into(), |k| k.trim().to_owned()),
        os,
    }
}

/// Versions of everything measured or measuring.
pub struct Versions {
    pub keyless: String,
    pub nginx: String,
    pub wrk: String,
    pub rustc: String,
}

pub fn versions(keyless: &Path, tools: &Tools, manifest_dir: &Path) -> Versions {
    let first_line = |text: Option<String>| {
        text.and_then(|t| t.lines().next().map(str::to_owned))
            .unwrap_or_else(|| "unknown".into())
    };
    let mut keyless_version = first_line(
        Command::new(keyless)
            .arg("--version")
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned()),
    );
    let dir = manifest_dir.to_string_lossy();
    if let Some(commit) = output("git", ["-C", &dir, "rev-parse", "--short", "HEAD"])
        .filter(|c| !c.contains(' ') && !c.is_empty())
    {
        let dirty = output(
            "git",
            [
                "-C",
                &dir,
                "status",
                "--porcelain",
                "--",
                "src",
                "Cargo.toml",
                "Cargo.lock",
            ],
        )
        .is_some_and(|s| !s.is_empty());
        keyless_version.push_str(&format!(
            " (git {commit}{})",
            if dirty { " + uncommitted changes" } else { "" }
        ));
    }
    let wrk_text = first_line(output(&tools.wrk.to_string_lossy(), ["-v"]));
    Versions {
        keyless: keyless_version,
        nginx: first_line(output(&tools.nginx.to_string_lossy(), ["-v"]))
            .trim_start_matches("nginx version: ")
            .to_owned(),
        // "wrk debian/4.1.0-3+b2 [epoll] Copyright (C) 2012 Will Glozer"
        wrk: wrk_text
            .split(" Copyright")
            .next()
            .unwrap_or(&wrk_text)
            .to_owned(),
        rustc: first_line(output("rustc", ["--version"])),
    }
}
