//! The parameter layout on the device. Users, checkpoints and the CPU
//! backends see the flat [`Network`] layout (per layer `w (n_out, n_in)` then
//! `b (n_out)`, packed); the GPU backend keeps params, grads and every
//! optimizer-state buffer in a padded one, where each layer's W and b start
//! on a multiple of 4 floats and each row of W is `w_ld = round_up(n_in, 4)`
//! floats long, so that every row of W starts on a `vec4` and the product
//! cores may load it as `vec4`s whatever the widths. The padding is zero:
//! padding gradients are never written, so padding parameters stay zero
//! under every optimizer and add nothing to the clip norm.
//!
//! [`DeviceLayout::to_device`] and [`DeviceLayout::to_flat`] are the one
//! mapping between the two, used by every upload and download.

use crate::network::Network;

/// One layer's place in the device layout (floats).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceLayer {
    /// Rows of W (neurons).
    pub n_out: usize,
    /// Columns of W (inputs).
    pub n_in: usize,
    /// Offset of W, a multiple of 4.
    pub w_off: usize,
    /// Floats from one row of W to the next: `round_up(n_in, 4)`.
    pub w_ld: usize,
    /// Offset of b, a multiple of 4.
    pub b_off: usize,
    /// Offsets of W and b in the flat layout.
    flat_w: usize,
    flat_b: usize,
}

/// The device layout of a network's parameters (module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceLayout {
    layers: Vec<DeviceLayer>,
    /// Floats on the device, a multiple of 4.
    len: usize,
    /// Floats in the flat layout.
    flat_len: usize,
}

impl DeviceLayout {
    /// The padded layout of `net`'s parameters.
    pub fn new(net: &Network) -> Self {
        let mut off = 0;
        let layers = net
            .layers()
            .iter()
            .map(|ly| {
                let w_ld = ly.n_in.next_multiple_of(4);
                let w_off = off;
                let b_off = w_off + ly.n_out * w_ld;
                off = (b_off + ly.n_out).next_multiple_of(4);
                DeviceLayer {
                    n_out: ly.n_out,
                    n_in: ly.n_in,
                    w_off,
                    w_ld,
                    b_off,
                    flat_w: ly.w_off,
                    flat_b: ly.b_off,
                }
            })
            .collect();
        DeviceLayout {
            layers,
            len: off,
            flat_len: net.param_count(),
        }
    }

    /// Each dense layer's place, bottom up.
    pub fn layers(&self) -> &[DeviceLayer] {
        &self.layers
    }

    /// Floats of one parameter-shaped buffer on the device.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the network has no parameters (never, for a valid network).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Floats in the flat layout (`Network::param_count`).
    pub fn flat_len(&self) -> usize {
        self.flat_len
    }

    /// The contiguous runs both layouts share, as `(flat offset, device
    /// offset, floats)`: each row of W, then b, layer by layer.
    fn runs(&self) -> impl Iterator<Item = (usize, usize, usize)> + '_ {
        self.layers.iter().flat_map(|l| {
            let rows = (0..l.n_out).map(|o| (l.flat_w + o * l.n_in, l.w_off + o * l.w_ld, l.n_in));
            rows.chain(std::iter::once((l.flat_b, l.b_off, l.n_out)))
        })
    }

    /// `flat` (the network's layout, `flat_len` floats) in the device
    /// layout, padding zero.
    pub fn to_device(&self, flat: &[f32]) -> Vec<f32> {
        self.map(flat, true)
    }

    /// `device` (this layout, `len` floats) in the network's flat layout;
    /// the padding is dropped.
    pub fn to_flat(&self, device: &[f32]) -> Vec<f32> {
        self.map(device, false)
    }

    /// The runs of `src` copied into the other layout (zero elsewhere).
    fn map(&self, src: &[f32], to_device: bool) -> Vec<f32> {
        let (from, to) = match to_device {
            true => (self.flat_len, self.len),
            false => (self.len, self.flat_len),
        };
        assert_eq!(src.len(), from, "parameters of another layout");
        let mut out = vec![0.0; to];
        for (f, d, n) in self.runs() {
            let (s, t) = if to_device { (f, d) } else { (d, f) };
            out[t..t + n].copy_from_slice(&src[s..s + n]);
        }
        out
    }

    /// The device offsets that hold no parameter (the padding), ascending.
    pub fn padding(&self) -> Vec<usize> {
        let mut used = vec![false; self.len];
        for (_, d, n) in self.runs() {
            used[d..d + n].fill(true);
        }
        (0..self.len).filter(|&i| !used[i]).collect()
    }

    /// [`DeviceLayout::to_device`] of each of `parts` parameter-shaped
    /// pieces laid end to end (Adam's state: m then v).
    pub fn to_device_parts(&self, flat: &[f32], parts: usize) -> Vec<f32> {
        assert_eq!(
            flat.len(),
            parts * self.flat_len,
            "state of another network"
        );
        flat.chunks(self.flat_len.max(1))
            .take(parts)
            .flat_map(|c| self.to_device(c))
            .collect()
    }

    /// [`DeviceLayout::to_flat`] of each of `parts` pieces laid end to end.
    pub fn to_flat_parts(&self, device: &[f32], parts: usize) -> Vec<f32> {
        assert_eq!(device.len(), parts * self.len, "state of another layout");
        device
            .chunks(self.len.max(1))
            .take(parts)
            .flat_map(|c| self.to_flat(c))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::Network;

    fn nets() -> Vec<Network> {
        [
            "5,7:relu,3",
            "3,5:tanh,6,2:softmax",
            "8,4:relu,12:linear",
            "1,1",
        ]
        .iter()
        .map(|s| Network::parse(s).unwrap())
        .collect()
    }

    #[test]
    fn offsets_aligned_strides_padded_and_disjoint() {
        for net in nets() {
            let d = DeviceLayout::new(&net);
            assert_eq!(d.flat_len(), net.param_count());
            assert_eq!(d.len() % 4, 0);
            let mut end = 0;
            for (l, ly) in d.layers().iter().zip(net.layers()) {
                assert_eq!((l.n_in, l.n_out), (ly.n_in, ly.n_out));
                assert_eq!(l.w_off % 4, 0, "{l:?}");
                assert_eq!(l.b_off % 4, 0, "{l:?}");
                assert_eq!(l.w_ld, ly.n_in.next_multiple_of(4));
                assert!(l.w_off >= end && l.b_off >= l.w_off + l.n_out * l.w_ld);
                end = l.b_off + l.n_out;
            }
            assert!(end <= d.len() && d.len() < end + 4);
        }
    }

    #[test]
    fn round_trip_with_zero_padding() {
        for net in nets() {
            let d = DeviceLayout::new(&net);
            let flat: Vec<f32> = (0..d.flat_len()).map(|i| i as f32 + 1.0).collect();
            let dev = d.to_device(&flat);
            assert_eq!(d.to_flat(&dev), flat);
            // Every flat value lands once; everything else is zero padding.
            let mut seen: Vec<f32> = dev.iter().copied().filter(|&v| v != 0.0).collect();
            seen.sort_by(f32::total_cmp);
            assert_eq!(seen, flat);
            let pad = d.padding();
            assert_eq!(pad.len(), d.len() - d.flat_len());
            assert!(pad.iter().all(|&i| dev[i] == 0.0));
            for l in d.layers() {
                for o in 0..l.n_out {
                    let row = l.w_off + o * l.w_ld;
                    assert!(dev[row + l.n_in..row + l.w_ld].iter().all(|&v| v == 0.0));
                }
            }
            for (l, ly) in d.layers().iter().zip(net.layers()) {
                // W[o, i] and b[o] of the flat layout at their device places.
                for o in 0..l.n_out {
                    for i in 0..l.n_in {
                        assert_eq!(
                            dev[l.w_off + o * l.w_ld + i],
                            flat[ly.w_off + o * l.n_in + i]
                        );
                    }
                    assert_eq!(dev[l.b_off + o], flat[ly.b_off + o]);
                }
            }
            let two: Vec<f32> = flat.iter().chain(&flat).map(|v| -v).collect();
            let dev2 = d.to_device_parts(&two, 2);
            assert_eq!(dev2.len(), 2 * d.len());
            assert_eq!(&dev2[d.len()..], &d.to_device(&two[d.flat_len()..])[..]);
            assert_eq!(d.to_flat_parts(&dev2, 2), two);
        }
    }

    #[test]
    fn aligned_widths_add_only_tail_padding() {
        let net = Network::parse("8,4:relu,12:linear").unwrap();
        let d = DeviceLayout::new(&net);
        for (l, ly) in d.layers().iter().zip(net.layers()) {
            assert_eq!((l.w_off, l.b_off, l.w_ld), (ly.w_off, ly.b_off, ly.n_in));
        }
        assert_eq!(d.len(), net.param_count().next_multiple_of(4));
    }
}
