#pragma once
// A content hash of a training set, for a registered model's lineage: the same files give the
// same hash wherever they are stored, and any change to a file's name or bytes changes it.
#include <filesystem>
#include <string>
#include <vector>

namespace tessera {

// SHA-256 (lowercase hex) over every regular file under `paths` (files, or folders searched
// recursively; hidden files and folders, whose names start with '.', are skipped). Each file is
// named by its path relative to the folder it was found in (a file given directly: its file
// name), the files are sorted by that name, and each contributes its name, a NUL, its size as
// 8 little-endian bytes and its bytes. Moving or copying the data elsewhere keeps the hash.
// Errors name a path that is missing or unreadable.
std::string hash_data_files(const std::vector<std::filesystem::path>& paths);

}  // namespace tessera
