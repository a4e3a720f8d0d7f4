// The playground files compiled into the binary: the same bytes as web/, every file the page
// loads is there, and each is served with the type a browser accepts.
#include <gtest/gtest.h>

#include <fstream>
#include <regex>
#include <set>

#include "server/web_assets.h"
#include "test_util.h"

using namespace tessera::server;

namespace {

std::filesystem::path web_dir() { return tessera::testing::source_dir() / "web"; }

std::string read_bytes(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

}  // namespace

TEST(ServerPlayground, EmbedsEveryWebFileByteForByte) {
  std::vector<std::string> on_disk;
  for (const auto& item : std::filesystem::recursive_directory_iterator(web_dir()))
    if (item.is_regular_file()) on_disk.push_back(std::filesystem::relative(item.path(), web_dir()).generic_string());
  std::sort(on_disk.begin(), on_disk.end());
  ASSERT_FALSE(on_disk.empty());
  EXPECT_EQ(web_asset_paths(), on_disk) << "reconfigure (cmake) after adding or removing files in web/";
  for (const auto& path : on_disk) {
    const auto embedded = web_asset(path);
    ASSERT_TRUE(embedded) << path;
    EXPECT_EQ(std::string(*embedded), read_bytes(web_dir() / path)) << path;
  }
}

TEST(ServerPlayground, EverythingThePageLoadsIsEmbedded) {
  const auto index = web_asset("index.html");
  ASSERT_TRUE(index);
  // Every /web/... reference of the page, and every relative import of every module.
  std::set<std::string> wanted;
  const std::string html(*index);
  const std::regex ref(R"((?:src|href)="/web/([^"]+)\")");
  for (auto it = std::sregex_iterator(html.begin(), html.end(), ref); it != std::sregex_iterator(); ++it) wanted.insert((*it)[1]);
  EXPECT_TRUE(wanted.count("app.js"));
  EXPECT_TRUE(wanted.count("style.css"));
  const std::regex import(R"(from\s+"\./([^"]+)\")");
  for (const auto& path : web_asset_paths()) {
    if (content_type_for(path).rfind("text/javascript", 0) != 0) continue;
    const std::string js(*web_asset(path));
    for (auto it = std::sregex_iterator(js.begin(), js.end(), import); it != std::sregex_iterator(); ++it) wanted.insert((*it)[1]);
  }
  EXPECT_GE(wanted.size(), 5u);
  for (const auto& path : wanted) EXPECT_TRUE(web_asset(path)) << path << " is loaded but not in web/";
  // No request may leave the server: nothing the page or its modules load is absolute.
  for (const auto& path : web_asset_paths()) {
    const std::string text(*web_asset(path));
    EXPECT_EQ(text.find("https://"), std::string::npos) << path;
    EXPECT_EQ(text.find("http://"), std::string::npos) << path;
  }
}

TEST(ServerPlayground, UnknownPathsAreNotFound) {
  EXPECT_FALSE(web_asset(""));
  EXPECT_FALSE(web_asset("missing.js"));
  EXPECT_FALSE(web_asset("../CMakeLists.txt"));
  EXPECT_FALSE(web_asset("/index.html"));
}

TEST(ServerPlayground, ContentTypesByExtension) {
  EXPECT_EQ(content_type_for("index.html"), "text/html; charset=utf-8");
  EXPECT_EQ(content_type_for("app.js"), "text/javascript; charset=utf-8");
  EXPECT_EQ(content_type_for("APP.JS"), "text/javascript; charset=utf-8");
  EXPECT_EQ(content_type_for("style.css"), "text/css; charset=utf-8");
  EXPECT_EQ(content_type_for("icons/logo.svg"), "image/svg+xml");
  EXPECT_EQ(content_type_for("shot.png"), "image/png");
  EXPECT_EQ(content_type_for("README"), "application/octet-stream");
  EXPECT_EQ(content_type_for("v1.2/README"), "application/octet-stream");
  EXPECT_EQ(content_type_for("archive.tar.zst"), "application/octet-stream");
}
