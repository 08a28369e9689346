include!("../build/libtorch.rs");

fn main() {
    libtorch_link();
}
