//! Command-line flags, parsed by clap and then checked into a plan.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

use crate::size::{parse_size, parse_size_arg, SizeArg};
use crate::source::spec::PlatformSpec;

#[derive(Debug, Parser)]
#[command(
    name = "rootbox",
    version,
    about = "Turn container images into bootable ext4 root filesystems, safely: layers are applied inside a sandbox, never on the host."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build an ext4 root filesystem from an image.
    Pull(PullArgs),
    /// Build an ext4 root filesystem and pack it with a manifest into a tar+zstd bundle.
    Bundle(BundleArgs),
    /// Report what rootbox found on this machine and which sandboxes can run.
    Doctor(DoctorArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Isolation {
    /// The microVM when a VMM is usable, else the container when root.
    Auto,
    /// Namespace container (needs root).
    Container,
    /// MicroVM (Firecracker or QEMU).
    Vm,
}

#[derive(Debug, Clone, clap::Args)]
pub struct PullArgs {
    /// oci:DIR[:TAG], docker-archive:FILE or rootfs-tar:FILE (rootfs-tar:- reads stdin)
    pub source: String,
    /// Where to write the ext4 image.
    #[arg(short, long)]
    pub output: PathBuf,
    #[arg(long, value_enum, default_value_t = Isolation::Auto)]
    pub isolation: Isolation,
    /// `auto` (content + headroom) or an exact size such as 4GiB, 512MiB, 4G, 4096M.
    #[arg(long, default_value = "auto", value_parser = parse_size_arg)]
    pub size: SizeArg,
    /// Free space added by --size auto, in percent of the minimum size.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(0..=1000))]
    pub headroom: u32,
    /// Platform to pick from an image index, and to require of the image.
    #[arg(long, default_value = "linux/amd64", value_parser = PlatformSpec::parse)]
    pub platform: PlatformSpec,
    /// Print one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
    /// Print progress lines on stderr even when it is not a terminal.
    #[arg(long)]
    pub progress: bool,
    /// The worker image directory (default: $ROOTBOX_WORKER_IMAGE, then the install location).
    #[arg(long)]
    pub worker_image: Option<PathBuf>,
    /// Refuse images whose layers uncompress to more than this, all layers together.
    #[arg(long, default_value = "64GiB", value_parser = parse_size)]
    pub max_uncompressed: u64,
    /// Refuse images with more tar entries than this, all layers together.
    #[arg(long, default_value_t = 4_000_000)]
    pub max_entries: u64,
    /// Filesystem label.
    #[arg(long, default_value = "rootfs")]
    pub label: String,
    /// Do not inject the default guest assets (see assets/README.md).
    #[arg(long)]
    pub no_default_assets: bool,
    /// Inject this directory tree into the image (modes kept, owned by root).
    #[arg(long, value_name = "DIR")]
    pub inject: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct BundleArgs {
    /// The same options as `pull`; `-o` names the bundle (OUT.tar.zst).
    #[command(flatten)]
    pub build: PullArgs,
    /// Catalog name (default: derived from the reference, e.g. debian-bookworm).
    #[arg(long)]
    pub name: Option<String>,
    /// Distribution (default: ID-VERSION_ID from the image's os-release).
    #[arg(long)]
    pub distro: Option<String>,
    /// Architecture (default: the --platform architecture).
    #[arg(long)]
    pub arch: Option<String>,
    /// The kernel this rootfs is meant to boot with, recorded in the manifest.
    #[arg(long)]
    pub kernel_ref: Option<String>,
    #[arg(long)]
    pub description: Option<String>,
    /// zstd compression level (1-22).
    #[arg(long, default_value_t = crate::bundle::ZSTD_LEVEL, value_parser = clap::value_parser!(i32).range(1..=22))]
    pub zstd_level: i32,
}

#[derive(Debug, clap::Args)]
pub struct DoctorArgs {
    #[arg(long)]
    pub worker_image: Option<PathBuf>,
    #[arg(long)]
    pub json: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_parse() {
        let c = Cli::try_parse_from([
            "rootbox",
            "pull",
            "oci:/x:tag",
            "-o",
            "out.ext4",
            "--size",
            "4GiB",
            "--json",
        ])
        .unwrap();
        let Command::Pull(p) = c.command else { panic!("not pull") };
        assert_eq!(p.size, SizeArg::Exact(4 << 30));
        assert_eq!(p.platform.to_string(), "linux/amd64");
        assert!(p.json);
        assert!(Cli::try_parse_from(["rootbox", "pull", "oci:/x", "-o", "o", "--size", "1.5G"])
            .is_err());
        assert!(Cli::try_parse_from([
            "rootbox",
            "pull",
            "oci:/x",
            "-o",
            "o",
            "--isolation",
            "chroot"
        ])
        .is_err());
        assert!(Cli::try_parse_from(["rootbox", "pull", "oci:/x"]).is_err(), "-o is required");
    }
}
