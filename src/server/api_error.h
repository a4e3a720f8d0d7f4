#pragma once
// An error answered to an API client in OpenAI's shape:
// {"error": {"message", "type", "param", "code"}} with an HTTP status, and "details" when there
// is more to say than one line.
#include <optional>
#include <stdexcept>
#include <string>

#include <nlohmann/json.hpp>

namespace tessera::server {

struct ApiError : std::runtime_error {
  ApiError(int status, std::string message, std::string type = "invalid_request_error",
           std::optional<std::string> param = std::nullopt, std::optional<std::string> code = std::nullopt)
      : std::runtime_error(message), status(status), type(std::move(type)), param(std::move(param)), code(std::move(code)) {}

  nlohmann::json body() const {
    nlohmann::json error = {{"message", what()},
                            {"type", type},
                            {"param", param ? nlohmann::json(*param) : nlohmann::json(nullptr)},
                            {"code", code ? nlohmann::json(*code) : nlohmann::json(nullptr)}};
    if (!details.is_null()) error["details"] = details;
    return {{"error", error}};
  }

  int status;
  std::string type;
  std::optional<std::string> param;
  std::optional<std::string> code;
  nlohmann::json details;  // more about the error (e.g. every bad line of a dataset); null: none
};

// A 400 about one request field.
inline ApiError bad_param(const std::string& param, const std::string& message, const std::string& code = "invalid_value") {
  return ApiError(400, message, "invalid_request_error", param, code);
}

}  // namespace tessera::server
