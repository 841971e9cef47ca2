//! The network: an MLP whose head predicts several quantiles that never
//! cross, the pinball loss it is trained with, and AdamW with its state in
//! the open so that a checkpoint can hold it.
//!
//! The head turns the last layer's outputs `o` into quantiles by
//! `q = [o₀, softplus(o₁), …, softplus(o_{k−1})] · U`, where `U` is the upper
//! triangular matrix of ones: the first quantile is free and every next one
//! adds a positive increment. The ONNX export builds the same graph.

use candle_core::{D, DType, Device, Tensor, Var};
use candle_nn::{Optimizer, ParamsAdamW};
use rand::{Rng as _, SeedableRng as _, rngs::StdRng};

use crate::Result;

/// One dense layer: `y = x · wᵀ + b`.
#[derive(Debug, Clone)]
pub struct Layer {
    /// Weights, `[out, in]`.
    pub weight: Var,
    /// Biases, `[out]`.
    pub bias: Var,
}

/// The MLP with its non-crossing quantile head.
#[derive(Debug, Clone)]
pub struct Mlp {
    /// Hidden layers (ReLU) then the output layer (one unit per quantile).
    pub layers: Vec<Layer>,
    /// Quantile levels of the outputs, ascending.
    pub quantiles: Vec<f64>,
    /// `[1, k]`: 1 for the first output, which is used as is.
    first_mask: Tensor,
    /// `[1, k]`: 1 for the increments, which go through softplus.
    rest_mask: Tensor,
    /// `[k, k]` upper triangular ones: the running sum of increments.
    cumulate: Tensor,
}

/// The head's constant tensors, as plain numbers (shared with the export).
pub fn head_constants(k: usize) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let first: Vec<f32> = (0..k).map(|i| if i == 0 { 1.0 } else { 0.0 }).collect();
    let rest: Vec<f32> = first.iter().map(|v| 1.0 - v).collect();
    let mut upper = vec![0.0; k * k];
    for i in 0..k {
        for j in i..k {
            upper[i * k + j] = 1.0;
        }
    }
    (first, rest, upper)
}

/// `ln(1 + eˣ)`, computed without overflow.
fn softplus(x: &Tensor) -> candle_core::Result<Tensor> {
    x.relu()? + (x.abs()?.neg()?.exp()? + 1.0)?.log()?
}

impl Mlp {
    /// A network with `hidden` units in each of `depth` hidden layers,
    /// initialised from `seed` (PyTorch's default: uniform in ±1/√fan_in).
    pub fn new(
        inputs: usize,
        hidden: usize,
        depth: usize,
        quantiles: Vec<f64>,
        seed: u64,
    ) -> Result<Self> {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut dims = vec![inputs];
        dims.extend(std::iter::repeat_n(hidden, depth));
        dims.push(quantiles.len());
        let mut layers = Vec::new();
        for w in dims.windows(2) {
            let (fan_in, fan_out) = (w[0], w[1]);
            let bound = 1.0 / (fan_in as f32).sqrt();
            let mut draw = |n: usize| -> Vec<f32> {
                (0..n).map(|_| rng.random_range(-bound..bound)).collect()
            };
            let weight = Tensor::from_vec(draw(fan_in * fan_out), (fan_out, fan_in), &Device::Cpu)?;
            let bias = Tensor::from_vec(draw(fan_out), fan_out, &Device::Cpu)?;
            layers.push(Layer {
                weight: Var::from_tensor(&weight)?,
                bias: Var::from_tensor(&bias)?,
            });
        }
        Self::from_layers(layers, quantiles)
    }

    /// A network from existing layers (a checkpoint).
    pub fn from_layers(layers: Vec<Layer>, quantiles: Vec<f64>) -> Result<Self> {
        let k = quantiles.len();
        let (first, rest, upper) = head_constants(k);
        Ok(Self {
            layers,
            first_mask: Tensor::from_vec(first, (1, k), &Device::Cpu)?,
            rest_mask: Tensor::from_vec(rest, (1, k), &Device::Cpu)?,
            cumulate: Tensor::from_vec(upper, (k, k), &Device::Cpu)?,
            quantiles,
        })
    }

    /// Width of the input rows.
    pub fn inputs(&self) -> usize {
        self.layers[0].weight.dims()[1]
    }

    /// Every trainable variable, in layer order (weight, bias).
    pub fn vars(&self) -> Vec<Var> {
        self.layers
            .iter()
            .flat_map(|l| [l.weight.clone(), l.bias.clone()])
            .collect()
    }

    /// `[n, inputs]` features to `[n, quantiles]` scaled quantiles, ascending.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = x.clone();
        let last = self.layers.len() - 1;
        for (i, l) in self.layers.iter().enumerate() {
            h = h
                .matmul(&l.weight.as_tensor().t()?)?
                .broadcast_add(l.bias.as_tensor())?;
            if i < last {
                h = h.relu()?;
            }
        }
        let z =
            (h.broadcast_mul(&self.first_mask)? + softplus(&h)?.broadcast_mul(&self.rest_mask)?)?;
        Ok(z.matmul(&self.cumulate)?)
    }

    /// Forward pass on a row-major buffer, returning row-major quantiles.
    pub fn predict(&self, features: &[f32]) -> Result<Vec<f32>> {
        let n = features.len() / self.inputs();
        let x = Tensor::from_slice(features, (n, self.inputs()), &Device::Cpu)?;
        Ok(self.forward(&x)?.detach().flatten_all()?.to_vec1()?)
    }
}

/// Mean pinball loss of `[n, k]` predictions against `[n]` targets.
pub fn pinball_loss(predicted: &Tensor, target: &Tensor, quantiles: &[f64]) -> Result<Tensor> {
    let k = quantiles.len();
    let taus: Vec<f32> = quantiles.iter().map(|q| *q as f32).collect();
    let tau = Tensor::from_vec(taus, (1, k), predicted.device())?;
    let error = target.unsqueeze(D::Minus1)?.broadcast_sub(predicted)?;
    let under = error.broadcast_mul(&tau)?;
    let over = error.broadcast_mul(&(tau - 1.0)?)?;
    Ok(under.maximum(&over)?.mean_all()?)
}

/// Pinball loss of one prediction, for reports.
pub fn pinball(q: f64, predicted: f64, actual: f64) -> f64 {
    let e = actual - predicted;
    (q * e).max((q - 1.0) * e)
}

/// AdamW (decoupled weight decay), the same update as `candle_nn::AdamW`,
/// whose moments are private; here they can be saved and restored.
#[derive(Debug)]
pub struct AdamW {
    vars: Vec<Var>,
    /// First moments, one per variable.
    pub first: Vec<Var>,
    /// Second moments, one per variable.
    pub second: Vec<Var>,
    /// Steps taken.
    pub step: usize,
    /// Hyper-parameters.
    pub params: ParamsAdamW,
}

impl Optimizer for AdamW {
    type Config = ParamsAdamW;

    fn new(vars: Vec<Var>, params: ParamsAdamW) -> candle_core::Result<Self> {
        let zeros = |v: &Var| Var::zeros(v.shape(), DType::F32, v.device());
        Ok(Self {
            first: vars.iter().map(zeros).collect::<candle_core::Result<_>>()?,
            second: vars.iter().map(zeros).collect::<candle_core::Result<_>>()?,
            vars,
            step: 0,
            params,
        })
    }

    fn step(&mut self, grads: &candle_core::backprop::GradStore) -> candle_core::Result<()> {
        self.step += 1;
        let p = &self.params;
        let scale_m = 1.0 / (1.0 - p.beta1.powi(self.step as i32));
        let scale_v = 1.0 / (1.0 - p.beta2.powi(self.step as i32));
        for ((theta, m), v) in self.vars.iter().zip(&self.first).zip(&self.second) {
            let Some(g) = grads.get(theta) else { continue };
            let next_m = ((m.as_tensor() * p.beta1)? + (g * (1.0 - p.beta1))?)?;
            let next_v = ((v.as_tensor() * p.beta2)? + (g.sqr()? * (1.0 - p.beta2))?)?;
            let adjusted = ((&next_m * scale_m)? / ((&next_v * scale_v)?.sqrt()? + p.eps)?)?;
            let decayed = (theta.as_tensor() * (1.0 - p.lr * p.weight_decay))?;
            theta.set(&(decayed - (adjusted * p.lr)?)?)?;
            m.set(&next_m)?;
            v.set(&next_v)?;
        }
        Ok(())
    }

    fn learning_rate(&self) -> f64 {
        self.params.lr
    }

    fn set_learning_rate(&mut self, lr: f64) {
        self.params.lr = lr;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_never_cross_whatever_the_weights() -> Result<()> {
        for seed in 0..20 {
            let net = Mlp::new(5, 8, 2, vec![0.1, 0.5, 0.9, 0.99], seed)?;
            let x = Tensor::randn(0f32, 3.0, (64, 5), &Device::Cpu)?;
            let q: Vec<Vec<f32>> = net.forward(&x)?.to_vec2()?;
            for row in q {
                assert!(row.windows(2).all(|w| w[0] <= w[1]), "{row:?}");
            }
        }
        Ok(())
    }

    #[test]
    fn pinball_loss_matches_its_definition() -> Result<()> {
        let pred = Tensor::from_vec(vec![1.0f32, 2.0, 3.0, 1.0, 2.0, 3.0], (2, 3), &Device::Cpu)?;
        let target = Tensor::from_vec(vec![2.5f32, 0.0], 2, &Device::Cpu)?;
        let qs = [0.1, 0.5, 0.9];
        let want: f64 = [(2.5, [1.0, 2.0, 3.0]), (0.0, [1.0, 2.0, 3.0])]
            .iter()
            .flat_map(|(y, p)| qs.iter().zip(p).map(move |(q, p)| pinball(*q, *p, *y)))
            .sum::<f64>()
            / 6.0;
        let got = pinball_loss(&pred, &target, &qs)?.to_scalar::<f32>()?;
        assert!((f64::from(got) - want).abs() < 1e-6, "{got} vs {want}");
        Ok(())
    }

    #[test]
    fn adamw_learns_a_line_and_is_reproducible() -> Result<()> {
        let run = || -> Result<f32> {
            let net = Mlp::new(1, 16, 1, vec![0.5], 3)?;
            let mut opt = AdamW::new(
                net.vars(),
                ParamsAdamW {
                    lr: 0.01,
                    ..Default::default()
                },
            )?;
            let x = Tensor::arange(0f32, 64.0, &Device::Cpu)?.affine(1.0 / 64.0, 0.0)?;
            let y = x.affine(2.0, 1.0)?;
            let x = x.unsqueeze(1)?;
            let mut loss = 0.0;
            for _ in 0..400 {
                let l = pinball_loss(&net.forward(&x)?, &y, &net.quantiles)?;
                opt.backward_step(&l)?;
                loss = l.to_scalar::<f32>()?;
            }
            Ok(loss)
        };
        let a = run()?;
        assert!(
            a < 0.05,
            "median regression of y = 2x + 1 should fit, loss {a}"
        );
        assert_eq!(a, run()?, "same seed, same result");
        Ok(())
    }
}
