#pragma once
// Checkpoints in a run's save folder, one folder per saved step:
//
//   save_folder/step-000100/   config.json, model.safetensors, tokenizer files (a Hugging Face
//                              DBRX folder: loads in transformers and in tessera as it is),
//                              optimizer.safetensors (AdamW moments and step count),
//                              trainer_state.json (step, tokens, the data loader's position,
//                              the run id and what the run has measured so far)
//   save_folder/latest         the name of the newest complete checkpoint
//
// A checkpoint is written into step-N.tmp and renamed into place only when complete, so a
// process killed at any moment leaves either the whole checkpoint or none of it.
#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>

#include <nlohmann/json.hpp>

#include "training/dbrx_training_model.h"
#include "training/optimizer.h"

namespace tessera::training {

std::filesystem::path checkpoint_dir(const std::filesystem::path& save_folder, int64_t step);

// Writes the checkpoint of `step`, then removes the oldest ones beyond keep_last (0 keeps all).
// `extra` may add files to the folder before it is moved into place.
std::filesystem::path save_checkpoint(const std::filesystem::path& save_folder, int64_t step,
                                      const DbrxTrainingModel& model, const AdamW& optimizer,
                                      const nlohmann::json& trainer_state, int64_t keep_last,
                                      const std::function<void(const std::filesystem::path&)>& extra = {});

// The newest complete checkpoint in save_folder, if any.
std::optional<std::filesystem::path> latest_checkpoint(const std::filesystem::path& save_folder);

// trainer_state.json of a checkpoint folder.
nlohmann::json read_trainer_state(const std::filesystem::path& checkpoint);

}  // namespace tessera::training
