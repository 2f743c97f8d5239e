fn main() {
    eprintln!("esfleet-agent: not built yet");
    std::process::exit(1);
}
