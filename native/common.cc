#include "common.h"

#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>

namespace devlease {

void ThrowErrno(Napi::Env env, const char* syscall, int err) {
  char unknown[24];
  const char* name = strerrorname_np(err);
  if (name == nullptr) {
    snprintf(unknown, sizeof(unknown), "E%d", err);
    name = unknown;
  }
  EnvState* state = StateOf(env);
  if (!state->sysError.IsEmpty()) {
    // new SysError(syscall, code, text, errno): message "syscall: text", as below.
    Napi::Object e = state->sysError.New({Napi::String::New(env, syscall), Napi::String::New(env, name),
                                          Napi::String::New(env, strerror(err)), Napi::Number::New(env, err)});
    throw Napi::Error(env, e);
  }
  std::string message = std::string(syscall) + ": " + strerror(err);
  Napi::Error error = Napi::Error::New(env, message);
  error.Set("code", Napi::String::New(env, name));
  error.Set("errno", Napi::Number::New(env, err));
  error.Set("syscall", Napi::String::New(env, syscall));
  throw error;
}

void ThrowMisuse(Napi::Env env, const char* code, const std::string& message) {
  EnvState* state = StateOf(env);
  if (!state->misuseError.IsEmpty()) {
    // new MisuseError(code, message)
    Napi::Object e = state->misuseError.New({Napi::String::New(env, code), Napi::String::New(env, message)});
    throw Napi::Error(env, e);
  }
  Napi::Error error = Napi::TypeError::New(env, message);
  error.Set("code", Napi::String::New(env, code));
  throw error;
}

void ThrowInvalidArg(Napi::Env env, const std::string& message) {
  ThrowMisuse(env, "ERR_DEVLEASE_INVALID_ARG", message);
}

int64_t IntArg(const Napi::CallbackInfo& info, size_t i, const char* name, int64_t min, int64_t max) {
  Napi::Value v = info[i];
  if (!v.IsNumber()) ThrowInvalidArg(info.Env(), std::string(name) + " must be a number");
  double d = v.As<Napi::Number>().DoubleValue();
  if (!std::isfinite(d) || std::trunc(d) != d || d < static_cast<double>(min) || d > static_cast<double>(max)) {
    ThrowInvalidArg(info.Env(), std::string(name) + " must be an integer in [" + std::to_string(min) + ", " +
                                    std::to_string(max) + "]");
  }
  return static_cast<int64_t>(d);
}

int FdArg(const Napi::CallbackInfo& info, size_t i, const char* name) {
  return static_cast<int>(IntArg(info, i, name, 0, INT32_MAX));
}

int FdElement(Napi::Env env, const Napi::Array& list, uint32_t i) {
  Napi::Value v = list.Get(i);
  double d = v.IsNumber() ? v.As<Napi::Number>().DoubleValue() : -1;
  if (d < 0 || d > INT32_MAX || static_cast<double>(static_cast<int>(d)) != d) {
    ThrowInvalidArg(env, "fds[" + std::to_string(i) + "] is not a file descriptor");
  }
  return static_cast<int>(d);
}

double TimeoutMsArg(const Napi::CallbackInfo& info, size_t i, bool optional) {
  Napi::Env env = info.Env();
  if (optional && (info.Length() <= i || info[i].IsUndefined())) return -1;
  if (!info[i].IsNumber()) ThrowInvalidArg(env, "timeoutMs must be a number");
  double ms = info[i].As<Napi::Number>().DoubleValue();
  if (std::isnan(ms)) ThrowInvalidArg(env, "timeoutMs must not be NaN");
  return ms < 0 || std::isinf(ms) ? -1 : ms;
}

timespec RelativeTimespec(double ms) {
  timespec rel{};
  rel.tv_sec = static_cast<time_t>(ms / 1e3);
  rel.tv_nsec = static_cast<long>(std::fmod(ms, 1e3) * 1e6);
  return rel;
}

int64_t OffsetArg(const Napi::CallbackInfo& info, size_t i, const char* name) {
  Napi::Value v = info[i];
  if (v.IsBigInt()) {
    bool lossless = false;
    int64_t n = v.As<Napi::BigInt>().Int64Value(&lossless);
    if (!lossless || n < 0) ThrowInvalidArg(info.Env(), std::string(name) + " must be in [0, 2^63)");
    return n;
  }
  return IntArg(info, i, name, 0, (int64_t{1} << 53) - 1);
}

bool BoolArg(const Napi::CallbackInfo& info, size_t i, const char* name) {
  Napi::Value v = info[i];
  if (!v.IsBoolean()) ThrowInvalidArg(info.Env(), std::string(name) + " must be a boolean");
  return v.As<Napi::Boolean>().Value();
}

std::string StringArg(const Napi::CallbackInfo& info, size_t i, const char* name) {
  Napi::Value v = info[i];
  if (!v.IsString()) ThrowInvalidArg(info.Env(), std::string(name) + " must be a string");
  std::string s = v.As<Napi::String>().Utf8Value();
  if (s.find('\0') != std::string::npos) ThrowInvalidArg(info.Env(), std::string(name) + " must not contain NUL");
  return s;
}

Bytes BytesArg(const Napi::CallbackInfo& info, size_t i, const char* name) {
  // Raw N-API on purpose: it yields the element pointer for views over both
  // ArrayBuffer and SharedArrayBuffer (Napi::ArrayBuffer rejects the latter).
  napi_env env = info.Env();
  napi_value v = info[i];
  bool is = false;
  void* data = nullptr;
  if (napi_is_typedarray(env, v, &is) == napi_ok && is) {
    napi_typedarray_type type;
    size_t length = 0;
    if (napi_get_typedarray_info(env, v, &type, &length, &data, nullptr, nullptr) == napi_ok) {
      size_t element = 1;
      switch (type) {
        case napi_int16_array:
        case napi_uint16_array:
          element = 2;
          break;
        case napi_int32_array:
        case napi_uint32_array:
        case napi_float32_array:
          element = 4;
          break;
        case napi_float64_array:
        case napi_bigint64_array:
        case napi_biguint64_array:
          element = 8;
          break;
        default:
          break;
      }
      return Bytes{static_cast<uint8_t*>(data), length * element};
    }
  }
  if (napi_is_dataview(env, v, &is) == napi_ok && is) {
    size_t length = 0;
    if (napi_get_dataview_info(env, v, &length, &data, nullptr, nullptr) == napi_ok) {
      return Bytes{static_cast<uint8_t*>(data), length};
    }
  }
  ThrowInvalidArg(info.Env(), std::string(name) + " must be a Uint8Array");
}

FdGuard::~FdGuard() {
  if (fd_ >= 0) {
    int saved = errno;
    close(fd_);
    errno = saved;
  }
}

EnvState* StateOf(Napi::Env env) {
  auto* state = env.GetInstanceData<EnvState>();
  if (state == nullptr) {
    state = new EnvState();
    env.SetInstanceData(state);  // deleted at environment teardown
  }
  return state;
}

namespace {

/** setErrorClasses(SysError, MisuseError): the classes syscall failures and misuse are thrown as. */
Napi::Value SetErrorClasses(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsFunction() || !info[1].IsFunction()) ThrowInvalidArg(env, "setErrorClasses needs two classes");
  EnvState* state = StateOf(env);
  state->sysError = Napi::Persistent(info[0].As<Napi::Function>());
  state->misuseError = Napi::Persistent(info[1].As<Napi::Function>());
  return env.Undefined();
}

}  // namespace

void RegisterErrors(Napi::Env env, Napi::Object exports) {
  exports.Set("setErrorClasses", Napi::Function::New(env, SetErrorClasses, "setErrorClasses"));
}

}  // namespace devlease
