//! AdamW with decoupled weight decay, written out (rather than candle_nn's) so its moments can
//! be saved with a checkpoint and a resumed run continues exactly where it stopped.

use std::collections::HashMap;
use std::path::Path;

use candle_core::backprop::GradStore;
use candle_core::{Result, Tensor, Var};
use candle_nn::VarMap;

/// AdamW state over a VarMap's variables, in name order.
pub struct AdamW {
    params: Vec<Param>,
    beta1: f64,
    beta2: f64,
    eps: f64,
    weight_decay: f64,
    /// Updates applied so far (bias correction uses it).
    pub steps: usize,
}

struct Param {
    name: String,
    var: Var,
    m: Tensor,
    v: Tensor,
    decay: bool,
}

impl AdamW {
    /// Fresh moments for every variable of `varmap`; weight decay applies to matrices and
    /// kernels, not to biases, norms, embeddings or the temperature.
    pub fn new(varmap: &VarMap, weight_decay: f64) -> Result<Self> {
        let data = varmap.data().lock().expect("varmap lock");
        let mut names: Vec<&String> = data.keys().collect();
        names.sort();
        let params = names
            .into_iter()
            .map(|name| {
                let var = data[name].clone();
                let t = var.as_tensor();
                Ok(Param {
                    name: name.clone(),
                    m: t.zeros_like()?,
                    v: t.zeros_like()?,
                    decay: t.rank() >= 2 && !name.contains("embedding"),
                    var,
                })
            })
            .collect::<Result<_>>()?;
        Ok(AdamW {
            params,
            beta1: 0.9,
            beta2: 0.98,
            eps: 1e-6,
            weight_decay,
            steps: 0,
        })
    }

    /// One update with learning rate `lr`; variables without a gradient are left alone.
    pub fn step(&mut self, grads: &GradStore, lr: f64) -> Result<()> {
        self.steps += 1;
        let t = self.steps as i32;
        let bc1 = 1.0 - self.beta1.powi(t);
        let bc2 = 1.0 - self.beta2.powi(t);
        for p in &mut self.params {
            let Some(g) = grads.get(p.var.as_tensor()) else {
                continue;
            };
            // Gradients can carry their backward graph (and with it the step's activations):
            // detached, the moments do not chain every step's graph to the next.
            let g = &g.detach();
            p.m = ((&p.m * self.beta1)? + (g * (1.0 - self.beta1))?)?;
            p.v = ((&p.v * self.beta2)? + (g.sqr()? * (1.0 - self.beta2))?)?;
            let update = (&p.m / bc1)?.div(&((&p.v / bc2)?.sqrt()? + self.eps)?)?;
            let mut w = p.var.as_tensor().detach();
            if p.decay {
                w = (w * (1.0 - lr * self.weight_decay))?;
            }
            p.var.set(&(w - (update * lr)?)?)?;
        }
        Ok(())
    }

    /// The moments as named tensors (`m.NAME`, `v.NAME`) for a safetensors file.
    pub fn state(&self) -> HashMap<String, Tensor> {
        self.params
            .iter()
            .flat_map(|p| {
                [
                    (format!("m.{}", p.name), p.m.clone()),
                    (format!("v.{}", p.name), p.v.clone()),
                ]
            })
            .collect()
    }

    /// Writes the moments to `path` (safetensors).
    pub fn save(&self, path: &Path) -> Result<()> {
        candle_core::safetensors::save(&self.state(), path)
    }

    /// Restores moments saved by [`AdamW::save`]; every variable must be present.
    pub fn load(&mut self, path: &Path, steps: usize) -> Result<()> {
        let device = match self.params.first() {
            Some(p) => p.var.device().clone(),
            None => return Ok(()),
        };
        let mut saved = candle_core::safetensors::load(path, &device)?;
        for p in &mut self.params {
            for (key, slot) in [("m", &mut p.m), ("v", &mut p.v)] {
                let name = format!("{key}.{}", p.name);
                let t = saved.remove(&name).ok_or_else(|| {
                    candle_core::Error::Msg(format!("optimizer state has no {name}"))
                })?;
                if t.shape() != slot.shape() {
                    return Err(candle_core::Error::Msg(format!(
                        "optimizer state {name} has shape {:?}, the model {:?}",
                        t.shape(),
                        slot.shape()
                    )));
                }
                *slot = t;
            }
        }
        self.steps = steps;
        Ok(())
    }
}

/// Linear warmup to `peak`, then cosine decay to 0 at `total`.
pub fn learning_rate(step: usize, warmup: usize, total: usize, peak: f64) -> f64 {
    if step < warmup {
        return peak * (step + 1) as f64 / warmup as f64;
    }
    let span = total.saturating_sub(warmup).max(1) as f64;
    let done = (step - warmup) as f64 / span;
    peak * 0.5 * (1.0 + (std::f64::consts::PI * done.min(1.0)).cos())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use candle_nn::{Init, VarBuilder};

    #[test]
    fn schedule_warms_up_then_decays_to_zero() {
        assert!((learning_rate(0, 10, 100, 1.0) - 0.1).abs() < 1e-12);
        assert!((learning_rate(9, 10, 100, 1.0) - 1.0).abs() < 1e-12);
        assert!((learning_rate(10, 10, 100, 1.0) - 1.0).abs() < 1e-12);
        assert!((learning_rate(55, 10, 100, 1.0) - 0.5).abs() < 1e-12);
        assert!(learning_rate(100, 10, 100, 1.0).abs() < 1e-12);
    }

    #[test]
    fn minimises_a_quadratic_and_resumes_exactly_from_saved_moments() {
        let dev = Device::Cpu;
        let run = |split: Option<usize>| -> Vec<f32> {
            let varmap = VarMap::new();
            let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
            let w = vb.get_with_hints((2, 2), "w", Init::Const(3.0)).unwrap();
            let mut opt = AdamW::new(&varmap, 0.01).unwrap();
            let target = Tensor::new(&[[1f32, -1.0], [0.5, 2.0]], &dev).unwrap();
            let dir = tempfile::tempdir().unwrap();
            for i in 0..200 {
                if Some(i) == split {
                    // Save, then continue with a fresh optimizer loaded from disk.
                    let p = dir.path().join("opt.safetensors");
                    opt.save(&p).unwrap();
                    let steps = opt.steps;
                    opt = AdamW::new(&varmap, 0.01).unwrap();
                    opt.load(&p, steps).unwrap();
                }
                let loss = (&w - &target).unwrap().sqr().unwrap().sum_all().unwrap();
                opt.step(&loss.backward().unwrap(), 0.05).unwrap();
            }
            w.flatten_all().unwrap().to_vec1().unwrap()
        };
        let straight = run(None);
        assert!(
            (straight[0] - 1.0).abs() < 0.05 && (straight[3] - 2.0).abs() < 0.05,
            "{straight:?}"
        );
        assert_eq!(straight, run(Some(77)));
    }
}
