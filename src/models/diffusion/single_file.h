#pragma once
// Single-file Stable Diffusion checkpoints: the one .safetensors file per model that users
// download, in the naming of the original training code rather than diffusers' folders.
//
//   SD 1.x  model.diffusion_model.*  first_stage_model.*  cond_stage_model.transformer.*  (CLIP)
//   SD 2.x  ... cond_stage_model.model.*  (OpenCLIP: packed q/k/v, resblocks; the last block is
//           not used, as in diffusers' 23-layer text encoder)
//   SDXL    ... conditioner.embedders.0.transformer.*  (CLIP)
//               conditioner.embedders.1.model.*        (OpenCLIP with text_projection)
//
// Every weight is renamed to diffusers' name for the component that uses it, as a view into
// the memory-mapped file (q/k/v row blocks and the transposed projection too), and its shape
// is checked against the component's config, so a ComponentWeights from here builds the same
// UNet, Vae and ClipTextModel as the diffusers folder of the same model.
#include <filesystem>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>

#include "models/diffusion/clip_text_model.h"
#include "models/diffusion/component_weights.h"
#include "models/diffusion/unet.h"
#include "models/diffusion/vae.h"

namespace tessera::diffusion {

enum class CheckpointKind { Sd1, Sd2, Sdxl };
const char* checkpoint_kind_name(CheckpointKind kind);  // "sd1", "sd2", "sdxl"

struct SingleFileCheckpoint {
  CheckpointKind kind = CheckpointKind::Sd1;
  // diffusers names. A text encoder without projection is named as transformers >= 5.6 saves
  // CLIPTextModel (no "text_model." level); one with projection keeps "text_model." and adds
  // "text_projection.weight" (CLIPTextModelWithProjection).
  ComponentWeights unet{"unet"}, vae{"vae"}, text_encoder{"text_encoder"};
  std::optional<ComponentWeights> text_encoder_2;  // SDXL
  UNetConfig unet_config;
  VaeConfig vae_config;
  ClipTextConfig text_config;
  std::optional<ClipTextConfig> text_config_2;
  // A diffusers scheduler_config.json: the config folder's, else the one from_single_file
  // would use for the kind (DDIM for SD 1.x/2.x, Euler for SDXL).
  nlohmann::json scheduler_config;
};

// The kind and the configs load_single_file uses without a config folder: the standard SD 1.5,
// SD 2.1 or SDXL-base configs, with channel widths, block and layer counts, the cross-attention
// width, vocabulary sizes and the added-embedding sizes read from the tensor shapes. Attention
// head counts follow the standard rule (8 heads in SD 1.x UNets, otherwise 64 channels per
// head) and are not checked here: widths that rule cannot split need a config folder.
struct SingleFileLayout {
  CheckpointKind kind = CheckpointKind::Sd1;
  UNetConfig unet;
  VaeConfig vae;
  ClipTextConfig text;
  std::optional<ClipTextConfig> text_2;
};
SingleFileLayout infer_single_file_layout(const std::filesystem::path& file);

// config_dir: an optional diffusers pipeline folder whose unet/ vae/ text_encoder*/ config.json
// (and scheduler/scheduler_config.json) give the configs, like diffusers'
// from_single_file(config=...). Errors (not an SD checkpoint, an unknown layout, a missing
// weight, a shape that does not fit the config) are one line naming the file and the key.
SingleFileCheckpoint load_single_file(const std::filesystem::path& file,
                                      const std::optional<std::filesystem::path>& config_dir = std::nullopt);

// The scheduler_config.json diffusers' from_single_file uses for a kind without a config
// folder: DDIM (SD 1.x, SD 2.x) or Euler (SDXL) over the scaled-linear betas of training.
// SD 2.x predicts v unless the checkpoint's global_step is the 512 base model's 875000.
nlohmann::json default_scheduler_config(CheckpointKind kind, std::optional<int64_t> global_step = std::nullopt);

// A readable .safetensors file with model.diffusion_model.* weights. Never throws.
bool looks_like_single_file_checkpoint(const std::filesystem::path& path);

}  // namespace tessera::diffusion
