#include "training/checkpoint.h"

#include <algorithm>
#include <fstream>
#include <vector>

#include <fmt/format.h>

#include "core/error.h"
#include "core/files.h"

namespace tessera::training {

namespace fs = std::filesystem;

namespace {

// step-N folders that are complete (they hold trainer_state.json), oldest first.
std::vector<std::pair<int64_t, fs::path>> complete_checkpoints(const fs::path& save_folder) {
  std::vector<std::pair<int64_t, fs::path>> out;
  std::error_code ec;
  if (!fs::is_directory(save_folder, ec)) return out;
  for (const auto& entry : fs::directory_iterator(save_folder, ec)) {
    const std::string name = entry.path().filename().string();
    if (!name.starts_with("step-") || name.ends_with(".tmp") || !entry.is_directory()) continue;
    if (!fs::exists(entry.path() / "trainer_state.json")) continue;
    try {
      out.emplace_back(std::stoll(name.substr(5)), entry.path());
    } catch (const std::exception&) {
    }
  }
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace

fs::path checkpoint_dir(const fs::path& save_folder, int64_t step) {
  return save_folder / fmt::format("step-{:06d}", step);
}

fs::path save_checkpoint(const fs::path& save_folder, int64_t step, const DbrxTrainingModel& model,
                         const AdamW& optimizer, const nlohmann::json& trainer_state, int64_t keep_last,
                         const std::function<void(const fs::path&)>& extra) {
  const fs::path final_dir = checkpoint_dir(save_folder, step);
  const fs::path tmp = final_dir.string() + ".tmp";
  std::error_code ec;
  fs::remove_all(tmp, ec);
  fs::create_directories(tmp, ec);
  if (ec) fail("{}: cannot create checkpoint folder: {}", tmp.string(), ec.message());
  model.save(tmp);
  optimizer.save(tmp / "optimizer.safetensors");
  if (extra) extra(tmp);
  write_file_atomically(tmp / "trainer_state.json", trainer_state.dump(1) + "\n");
  fs::remove_all(final_dir, ec);
  fs::rename(tmp, final_dir, ec);
  if (ec) fail("{}: cannot move the checkpoint into place: {}", final_dir.string(), ec.message());
  write_file_atomically(save_folder / "latest", final_dir.filename().string() + "\n");

  if (keep_last > 0) {
    auto all = complete_checkpoints(save_folder);
    for (size_t i = 0; i + static_cast<size_t>(keep_last) < all.size(); ++i) fs::remove_all(all[i].second, ec);
  }
  return final_dir;
}

std::optional<fs::path> latest_checkpoint(const fs::path& save_folder) {
  auto all = complete_checkpoints(save_folder);
  if (all.empty()) return std::nullopt;
  return all.back().second;
}

nlohmann::json read_trainer_state(const fs::path& checkpoint) {
  const fs::path file = checkpoint / "trainer_state.json";
  std::ifstream in(file);
  if (!in) fail("{}: cannot read", file.string());
  try {
    return nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    fail("{}: not valid JSON: {}", file.string(), e.what());
  }
}

}  // namespace tessera::training
