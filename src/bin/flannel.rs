//! The `flannel` CNI plugin binary (see `flannel_embed::cni`): a container
//! runtime runs it from CNI_PATH for the conflist's `flannel` entry.

fn main() -> std::process::ExitCode {
    flannel_embed::cni::main()
}
