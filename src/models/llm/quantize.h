#pragma once
// Quantizing a decoder's weights to 8- or 4-bit blocks, in memory (at load time) or for
// writing a GGUF file ahead of time. Matrices are quantized along their input dimension;
// norms, the router and the embedding table's precision choices follow llama.cpp's: 1-d
// tensors stay f32, everything 2-d is quantized.
#include <filesystem>
#include <memory>

#include "core/dtype.h"
#include "formats/gguf.h"
#include "models/llm/decoder.h"

namespace tessera {

// Returns weights with every matrix in `dtype` (Q8_0, Q4_0 or Q4_1; F32/F16/BF16 convert).
// Expert down projections stored x.W (transformers' DBRX layout) are transposed so that every
// matrix is used as x.W^T. Rows whose length is not a multiple of the block stay as they were.
DecoderWeights quantize_weights(const DecoderConfig& config, const DecoderWeights& weights, DType dtype,
                                bool show_progress);

// A copy of `model` (a DecoderModel) with its weights quantized in memory.
std::unique_ptr<LanguageModel> quantize_model(const LanguageModel& model, DType dtype);

// Writes a model as GGUF (architecture "dbrx" or "llama", llama.cpp's tensor names and
// hyperparameter keys) to `path`, with `extra` metadata (e.g. the source file's tokenizer.*).
void write_decoder_gguf(const DecoderConfig& config, const DecoderWeights& weights, const std::filesystem::path& path,
                        const std::vector<std::pair<std::string, GgufValue>>& extra = {});

// `tessera quantize`: reads the model at `source` (Hugging Face DBRX folder or GGUF), writes
// `out_dir`/model.gguf in `dtype` and copies the tokenizer files (or, from a GGUF source, its
// tokenizer metadata). Returns the written file.
std::filesystem::path quantize_model_files(const std::filesystem::path& source, DType dtype,
                                           const std::filesystem::path& out_dir);

}  // namespace tessera
