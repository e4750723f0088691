fn main() {
    println!("sidekick {}", env!("CARGO_PKG_VERSION"));
}
