use burn::prelude::*;
use burn::tensor::DType;
use rayon::prelude::*;

/// The classic sinusoidal table [len, d_model]: even columns
/// `sin(pos / 10000^(2i/d))`, odd columns the matching cosine.
///
/// Computed in f32 exactly as the reference builds its `pe` buffer.
/// Like the reference's buffer, it then takes the model's `dtype`.
pub fn sinusoidal_table<B: Backend>(len: usize, d_model: usize, device: &B::Device, dtype: DType) -> Tensor<B, 2> {
    Tensor::from_data(TensorData::new(sinusoidal_values(len, d_model), [len, d_model]), (device, dtype))
}

pub(crate) fn sinusoidal_values(len: usize, d_model: usize) -> Vec<f32> {
    let scale = -(10000f32).ln() / d_model as f32;
    let div: Vec<f32> = (0..d_model).step_by(2).map(|i| (i as f32 * scale).exp()).collect();
    let mut values = vec![0f32; len * d_model];
    // In parallel: the checkpoint's 5000-row buffer is checked against it at load.
    values.par_chunks_mut(d_model.max(1)).enumerate().for_each(|(pos, row)| {
        for (col, value) in row.iter_mut().enumerate() {
            let angle = pos as f32 * div[col / 2];
            *value = if col % 2 == 0 { angle.sin() } else { angle.cos() };
        }
    });
    values
}
