//! MNIST-shaped data through the library: 28×28 "images" of 10 classes (each
//! a random prototype plus noise), a 784-128:relu-10:softmax network trained
//! with cross-entropy on the GPU if there is one, else the CPU.
//!
//!     cargo run --release --example mnist_like
use rand::{Rng, SeedableRng};
use shadertrain::data::{Dataset, Task};
use shadertrain::{network::Network, Trainer};

fn images(n: usize, seed: u64) -> shadertrain::Result<Dataset> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let protos: Vec<Vec<f32>> = (0..10)
        .map(|_| (0..784).map(|_| rng.random()).collect())
        .collect();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let (mut x, mut y) = (Vec::with_capacity(n * 784), vec![0.0; n * 10]);
    for i in 0..n {
        let class = rng.random_range(0..10);
        x.extend(
            protos[class]
                .iter()
                .map(|p| (p + rng.random_range(-0.5..0.5f32)).clamp(0.0, 1.0)),
        );
        y[i * 10 + class] = 1.0;
    }
    Dataset::from_vecs(
        "mnist-like",
        (784, 10),
        x,
        y,
        Task::Classification { classes: 10 },
    )
}

fn main() -> shadertrain::Result<()> {
    let (train, test) = (images(6000, 1)?, images(1000, 2)?);
    let net = Network::parse("784,128:relu,10:softmax")?;
    let mut t = Trainer::auto(&net, 64)?.epochs(3).lr(0.1).seed(1);
    println!("training {} on {}", net.describe(), t.backend().describe());
    t.fit_with(&train, Some(&test), |e| {
        println!(
            "epoch {}: loss {:.4}, validation accuracy {:.1}%",
            e.epoch,
            e.loss,
            100.0 * e.val_accuracy.unwrap_or(0.0)
        );
    })?;
    let (totals, metric) = t.evaluate(&test)?;
    println!(
        "test accuracy {:.2}%",
        100.0 * totals.accuracy(metric).unwrap_or(0.0)
    );
    t.save(std::path::Path::new("mnist_like.safetensors"))
}
