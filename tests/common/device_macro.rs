//! `test_device!(check_x, x_cpu, x_gpu)`: one check, two tests. The first
//! runs `check_x(Device::Cpu)`; the second `check_x` on the GPU, or prints
//! why it skipped (with `REQUIRE_GPU=1` a missing adapter fails instead).
//! `Device` is whichever the including test support defines: the library
//! tests' (`common`, holding the GPU context) or the CLI tests'
//! (`cli_support`, naming the `--backend`). Both have `Device::gpu(test)`.

#[allow(unused_macros)]
macro_rules! test_device {
    ($check:ident, $cpu:ident, $gpu:ident) => {
        #[test]
        fn $cpu() {
            $check(Device::Cpu);
        }

        #[test]
        fn $gpu() {
            if let Some(device) = Device::gpu(stringify!($gpu)) {
                $check(device);
            }
        }
    };
}
#[allow(unused_imports)]
pub(crate) use test_device;
