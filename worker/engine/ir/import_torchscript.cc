#include "worker/engine/ir/import_torchscript.h"

#include <torch/csrc/jit/api/function_impl.h>
#include <torch/csrc/jit/frontend/error_report.h>
#include <torch/csrc/jit/ir/irparser.h>
#include <torch/csrc/jit/serialization/import.h>
#include <torch/version.h>

#include <functional>
#include <map>
#include <optional>
#include <set>
#include <regex>
#include <unordered_map>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "absl/strings/str_split.h"
#include "absl/strings/str_join.h"
#include "worker/engine/base/status_macros.h"
#include "worker/engine/base/torch_status.h"

namespace quantd::engine {
namespace {

namespace jit = torch::jit;

// What a TorchScript value stands for during the symbolic walk.
struct Sym {
  enum class Kind { kConstant, kValue, kModule, kFunction, kList, kTuple };
  Kind kind = Kind::kConstant;
  c10::IValue constant;
  std::string constant_name;
  int value = -1;
  c10::intrusive_ptr<c10::ivalue::Object> object;  // kModule
  std::string path;                                 // kModule
  jit::Function* function = nullptr;                // kFunction
  std::vector<Sym> items;                           // kList / kTuple
  c10::TypePtr type;

  bool IsConstant() const { return kind == Kind::kConstant; }
};

Sym ConstantSym(c10::IValue v, std::string name = "") {
  Sym s;
  s.kind = Sym::Kind::kConstant;
  s.constant = std::move(v);
  s.constant_name = std::move(name);
  return s;
}

OpKind ClassifyOp(const jit::Node* node, const std::vector<Sym>& args) {
  const std::string op = node->kind().toQualString();
  auto is_value = [&](size_t i) { return i < args.size() && args[i].kind == Sym::Kind::kValue; };
  auto all_constant = [&](size_t from) {
    for (size_t i = from; i < args.size(); ++i) {
      if (!args[i].IsConstant()) return false;
    }
    return true;
  };
  // Weights, bias and geometry must be constants: the int8 kernel is packed
  // from them once (a computed bias, `b.to(x.dtype)`, was dropped). String
  // padding ("same", "valid") has no prepacked form: it stays FP32.
  if (op == "aten::conv2d" && args.size() == 7 && is_value(0) && all_constant(1) && !args[4].constant.isString()) {
    return OpKind::kConv2d;
  }
  if (op == "aten::linear" && is_value(0) && all_constant(1)) return OpKind::kLinear;
  if (op == "aten::batch_norm" && is_value(0)) {
    for (size_t i = 1; i <= 4; ++i) {
      if (!args[i].IsConstant()) return OpKind::kGeneric;
    }
    if (args[5].IsConstant() && args[5].constant.isBool() && !args[5].constant.toBool()) return OpKind::kBatchNorm;
    return OpKind::kGeneric;
  }
  if (op == "aten::relu" || op == "aten::relu_") return OpKind::kRelu;
  // A tensor the int8 add can take: not a number (x + x.size(1) is
  // aten::add(Tensor, Scalar)), nor a tensor known to hold integers (traced
  // graphs know dtypes; scripted ones do not, and pass as float here).
  auto is_float_tensor = [&](size_t i) {
    if (!is_value(i) || i >= node->inputs().size()) return false;
    const auto tensor = node->input(i)->type()->cast<c10::TensorType>();
    if (tensor == nullptr) return false;
    const auto dtype = tensor->scalarType();
    return !dtype.has_value() || c10::isFloatingType(*dtype);
  };
  if ((op == "aten::add" || op == "aten::add_") && args.size() == 3 && is_float_tensor(0) && is_float_tensor(1) &&
      args[2].IsConstant() && args[2].constant.isInt() && args[2].constant.toInt() == 1) {
    return OpKind::kAdd;
  }
  if (op == "aten::pad" && args.size() == 4 && args[1].IsConstant() && args[2].IsConstant() &&
      args[2].constant.isString() && args[2].constant.toStringRef() == "constant" && args[3].IsConstant()) {
    const c10::IValue& fill = args[3].constant;
    if (fill.isNone() || (fill.isDouble() && fill.toDouble() == 0.0)) return OpKind::kPad;
  }
  if (op == "aten::constant_pad_nd" && args.size() == 3 && args[1].IsConstant() && args[2].IsConstant() &&
      args[2].constant.isScalar() && args[2].constant.toScalar().toDouble() == 0.0) {
    return OpKind::kPad;
  }
  // With a divisor_override it is not an average: LibTorch's int8 kernels
  // ignore it (qnnpack) or saturate at the input's scale (onednn). Nor with
  // padding that the average leaves out (count_include_pad=False): qnnpack's
  // kernel divides by the whole window at the borders.
  auto pads_counted = [&] {
    if (args.size() < 6) return true;  // the defaults: no padding, counted
    bool no_padding = args[3].IsConstant() && args[3].constant.isIntList();
    if (no_padding) {
      for (int64_t p : args[3].constant.toIntVector()) no_padding = no_padding && p == 0;
    }
    const bool counted = args[5].IsConstant() && args[5].constant.isBool() && args[5].constant.toBool();
    return no_padding || counted;
  };
  if (op == "aten::avg_pool2d" && (args.size() < 7 || (args[6].IsConstant() && args[6].constant.isNone())) &&
      pads_counted()) {
    return OpKind::kAvgPool2d;
  }
  if (op == "aten::adaptive_avg_pool2d") return OpKind::kAdaptiveAvgPool2d;
  // Not with both padding and dilation: LibTorch 1.13's QNNPACK kernel is
  // wrong there (errors of 130-190 codes), so it stays FP32 (also on onednn,
  // which would be exact: the engine is chosen after import; the cost is a
  // dequantize and quantize around a rare op).
  if (op == "aten::max_pool2d") {
    auto all_equal = [&](size_t i, int64_t value) {
      if (i >= args.size()) return true;  // the default: no padding, dilation 1
      if (!args[i].IsConstant() || !args[i].constant.isIntList()) return false;
      for (int64_t v : args[i].constant.toIntVector()) {
        if (v != value) return false;
      }
      return true;
    };
    if (!all_equal(3, 0) && !all_equal(4, 1)) return OpKind::kGeneric;
    return OpKind::kMaxPool2d;
  }
  if (op == "aten::flatten") return OpKind::kFlatten;
  if (op == "aten::softmax") return OpKind::kSoftmax;
  auto constant_bound = [&](size_t i) {
    return i < args.size() && args[i].IsConstant() && (args[i].constant.isNone() || args[i].constant.isScalar());
  };
  // In place too where LibTorch's quantized kernels have it (clamp_ has none).
  if ((op == "aten::hardtanh" || op == "aten::hardtanh_") && is_value(0) && constant_bound(1) && constant_bound(2) &&
      !args[1].constant.isNone() && !args[2].constant.isNone()) {
    return OpKind::kClamp;
  }
  if ((op == "aten::relu6" || op == "aten::relu6_") && is_value(0)) return OpKind::kClamp;
  if (op == "aten::clamp" && args.size() == 3 && is_value(0) && constant_bound(1) && constant_bound(2)) return OpKind::kClamp;
  if ((op == "aten::sigmoid" || op == "aten::hardsigmoid" || op == "aten::tanh") && is_value(0)) {
    return OpKind::kFixedQParams;
  }
  if (op == "aten::hardswish" && is_value(0)) return OpKind::kHardswish;
  if (op == "aten::cat" && args.size() == 2 && args[0].kind == Sym::Kind::kList && !args[0].items.empty() &&
      args[1].IsConstant() && args[1].constant.isInt()) {
    bool all_values = true;
    for (const Sym& item : args[0].items) all_values = all_values && item.kind == Sym::Kind::kValue;
    if (all_values) return OpKind::kCat;
  }
  if (op == "aten::dropout" && args.size() == 3 && args[2].IsConstant() && args[2].constant.isBool() &&
      !args[2].constant.toBool()) {
    return OpKind::kDropout;
  }
  return OpKind::kGeneric;
}

// The argument of an op that turns on its training behaviour: dropout's
// `train`, batch_norm's `training`. torch.jit.trace records it as a constant,
// so a model traced before model.eval() keeps it on.
std::optional<size_t> TrainingFlag(const std::string& op) {
  for (const char* dropout : {"aten::dropout", "aten::dropout_", "aten::feature_dropout", "aten::feature_dropout_",
                              "aten::alpha_dropout", "aten::alpha_dropout_", "aten::feature_alpha_dropout",
                              "aten::feature_alpha_dropout_"}) {
    if (op == dropout) return 2;
  }
  if (op == "aten::batch_norm") return 5;
  return std::nullopt;
}

bool IsConstantOne(const Sym& s) {
  return s.IsConstant() && ((s.constant.isInt() && s.constant.toInt() == 1) ||
                            (s.constant.isDouble() && s.constant.toDouble() == 1.0));
}
bool IsConstantTensor(const Sym& s, int64_t dim) {
  return s.IsConstant() && s.constant.isTensor() && s.constant.toTensor().dim() == dim;
}
bool IsZeroList(const Sym& s) {
  if (!s.IsConstant() || !s.constant.isIntList()) return false;
  for (int64_t v : s.constant.toIntVector()) {
    if (v != 0) return false;
  }
  return true;
}

// An item of a list an op made at run time (chunk's tensors, size's ints),
// by the list's element type.
constexpr char kTensorListItemIr[] = R"IR(
graph(%l : Tensor[], %i : int):
  %r : Tensor = aten::__getitem__(%l, %i)
  return (%r))IR";
constexpr char kIntListItemIr[] = R"IR(
graph(%l : int[], %i : int):
  %r : int = aten::__getitem__(%l, %i)
  return (%r))IR";
constexpr char kFloatListItemIr[] = R"IR(
graph(%l : float[], %i : int):
  %r : float = aten::__getitem__(%l, %i)
  return (%r))IR";

const char* ListItemIr(const c10::TypePtr& list_type) {
  const auto list = list_type->cast<c10::ListType>();
  if (list == nullptr) return nullptr;
  switch (list->getElementType()->kind()) {
    case c10::TypeKind::TensorType: return kTensorListItemIr;
    case c10::TypeKind::IntType: return kIntListItemIr;
    case c10::TypeKind::FloatType: return kFloatListItemIr;
    default: return nullptr;
  }
}

// The scripted form of an op torch.jit.trace records differently: the node
// to run and classify, and its arguments.
struct CanonicalOp {
  const char* ir;  // the op as a one-node TorchScript graph
  std::vector<Sym> args;
};

std::optional<CanonicalOp> ScriptedForm(const jit::Node* node, const std::vector<Sym>& args,
                                        const std::string& module_path) {
  const std::string op = node->kind().toQualString();
  // Conv2d.forward traced: aten::_convolution(input, weight, bias, stride,
  // padding, dilation, transposed, output_padding, groups, benchmark,
  // deterministic, cudnn_enabled[, allow_tf32]). The trailing flags only pick
  // GPU algorithms; on the CPU it computes what conv2d computes.
  if (op == "aten::_convolution" && (args.size() == 12 || args.size() == 13) && IsConstantTensor(args[1], 4) &&
      args[6].IsConstant() && args[6].constant.isBool() && !args[6].constant.toBool() && IsZeroList(args[7])) {
    return CanonicalOp{R"IR(
graph(%x : Tensor, %w : Tensor, %b : Tensor?, %s : int[], %p : int[], %d : int[], %g : int):
  %r : Tensor = aten::conv2d(%x, %w, %b, %s, %p, %d, %g)
  return (%r))IR",
                       {args[0], args[1], args[2], args[3], args[4], args[5], args[8]}};
  }
  // Linear as older exports trace it: addmm(bias, input, weight.t(), beta=1, alpha=1).
  if (op == "aten::addmm" && args.size() == 5 && IsConstantTensor(args[2], 2) && args[0].IsConstant() &&
      args[0].constant.isTensor() && IsConstantOne(args[3]) && IsConstantOne(args[4])) {
    Sym weight = ConstantSym(args[2].constant.toTensor().t().contiguous(),
                             module_path.empty() ? "" : absl::StrCat(module_path, ".weight"));
    return CanonicalOp{R"IR(
graph(%x : Tensor, %w : Tensor, %b : Tensor?):
  %r : Tensor = aten::linear(%x, %w, %b)
  return (%r))IR",
                       {args[1], weight, args[0]}};
  }
  return std::nullopt;
}

bool BlockRaises(const jit::Block* block) {
  for (const jit::Node* n : block->nodes()) {
    if (n->kind() == c10::prim::RaiseException) return true;
  }
  return false;
}

class Importer {
 public:
  explicit Importer(Graph* graph) : graph_(graph) {}

  absl::Status Run() {
    auto object = graph_->module._ivalue();
    jit::Function* forward = object->type()->findMethod("forward");
    if (forward == nullptr) return absl::InvalidArgumentError("model has no forward method");
    std::shared_ptr<jit::Graph> fg = jit::toGraphFunction(*forward).graph();
    std::vector<Sym> args;
    Sym self;
    self.kind = Sym::Kind::kModule;
    self.object = object;
    self.path = "";
    args.push_back(self);
    const std::vector<c10::Argument>& schema = forward->getSchema().arguments();
    for (size_t i = 1; i < fg->inputs().size(); ++i) {
      const jit::Value* in = fg->inputs()[i];
      // An argument after the input with a default (k: int = 2, y:
      // Optional[Tensor] = None) keeps it: a caller passing the input alone
      // gets that default, and branches on it fold here.
      if (i >= 2 && i < schema.size() && schema[i].default_value().has_value()) {
        args.push_back(ConstantSym(*schema[i].default_value()));
        continue;
      }
      Sym s;
      s.kind = Sym::Kind::kValue;
      s.value = graph_->NewValue();
      graph_->inputs.push_back(s.value);
      graph_->input_types.push_back(in->type());
      // "x.1" -> "x": TorchScript's SSA suffix means nothing to a reader.
      std::string name = in->debugName();
      const auto dot = name.rfind('.');
      if (dot != std::string::npos && dot > 0) name = name.substr(0, dot);
      graph_->input_names.push_back(name);
      args.push_back(s);
    }
    std::vector<Sym> outs;
    QUANTD_RETURN_IF_ERROR(WalkGraph(*fg, args, self, &outs));
    if (outs.size() != 1) return absl::InternalError("forward must return one value");
    const Sym& out = outs[0];
    if (out.kind == Sym::Kind::kTuple) {
      graph_->output_is_tuple = true;
      for (const Sym& item : out.items) {
        QUANTD_ASSIGN_OR_RETURN(Operand o, ToOperand(item, "model output"));
        graph_->outputs.push_back(o);
      }
    } else {
      QUANTD_ASSIGN_OR_RETURN(Operand o, ToOperand(out, "model output"));
      graph_->outputs.push_back(o);
    }
    RemoveDeadNodes();
    NameNodes();
    return absl::OkStatus();
  }

 private:
  using Env = std::unordered_map<const jit::Value*, Sym>;

  absl::Status WalkGraph(const jit::Graph& g, const std::vector<Sym>& args, const Sym& module,
                         std::vector<Sym>* outs) {
    if (++depth_ > 64) return absl::InvalidArgumentError("call depth over 64 (recursion?)");
    Env env;
    for (size_t i = 0; i < g.inputs().size() && i < args.size(); ++i) env[g.inputs()[i]] = args[i];
    QUANTD_RETURN_IF_ERROR(WalkBlock(g.block(), &env, module));
    for (const jit::Value* v : g.outputs()) outs->push_back(env.at(v));
    --depth_;
    return absl::OkStatus();
  }

  absl::Status WalkBlock(const jit::Block* block, Env* env, const Sym& module) {
    for (const jit::Node* node : block->nodes()) {
      QUANTD_RETURN_IF_ERROR(WalkNode(node, env, module));
    }
    return absl::OkStatus();
  }

  // PyTorch's own code running here, as Python names it ("torch.nn.Upsample",
  // "torch.nn.functional.interpolate"), or "": a torch.nn function called,
  // else the module if it is one of torch.nn's.
  std::string PyTorchCode(const Sym& module) const {
    // "__torch__.torch.nn.functional.___torch_mangle_1.interpolate" is
    // torch.nn.functional.interpolate; "" unless it is PyTorch's.
    auto python_name = [](const std::string& qualified) -> std::string {
      absl::string_view name = qualified;
      if (!absl::ConsumePrefix(&name, "__torch__.") || !absl::StartsWith(name, "torch.")) return "";
      std::vector<std::string> parts;
      for (absl::string_view part : absl::StrSplit(name, '.')) {
        if (!absl::StartsWith(part, "___torch_mangle_")) parts.emplace_back(part);
      }
      return absl::StrJoin(parts, ".");
    };
    std::string module_type;
    if (module.kind == Sym::Kind::kModule && module.object != nullptr) {
      module_type = python_name(module.object->type()->name()->qualifiedName());
      // torch.nn.modules.upsampling.Upsample: torch.nn.Upsample, as users write it.
      if (!absl::StartsWith(module_type, "torch.nn.")) {
        module_type.clear();
      } else {
        module_type = absl::StrCat("torch.nn.", module_type.substr(module_type.rfind('.') + 1));
      }
    }
    for (auto it = functions_.rbegin(); it != functions_.rend(); ++it) {
      if (std::string function = python_name(*it); !function.empty()) {
        return module_type.empty() ? function : absl::StrCat(module_type, "'s call of ", function);
      }
    }
    return module_type;
  }

  // Why PyTorch's own scripted code stops the import, and what to do.
  static std::string UnfollowedLibraryCode() {
    return ", whose scripted code branches or loops on its input's shape, which quantd's import cannot follow; "
           "save the model with torch.jit.trace instead (traced, it runs as recorded, in FP32 where it has no "
           "int8 kernel)";
  }

  std::string Where(const Sym& module) const {
    return module.path.empty() ? std::string("the model's forward") : absl::StrCat("module '", module.path, "'");
  }

  absl::Status WalkNode(const jit::Node* node, Env* env, const Sym& module) {
    const c10::Symbol kind = node->kind();
    auto in = [&](size_t i) -> const Sym& { return env->at(node->inputs()[i]); };

    if (kind == c10::prim::Constant) {
      const jit::Value* out = node->output();
      if (auto fn = out->type()->cast<c10::FunctionType>()) {
        Sym s;
        s.kind = Sym::Kind::kFunction;
        s.function = fn->function();
        (*env)[out] = s;
        return absl::OkStatus();
      }
      auto value = jit::toIValue(out);
      if (!value) return absl::InvalidArgumentError(absl::StrCat("unsupported constant in ", Where(module)));
      (*env)[out] = ConstantSym(*value);
      return absl::OkStatus();
    }
    if (kind == c10::prim::GetAttr) {
      const Sym& owner = in(0);
      const std::string name = node->s(c10::attr::name);
      if (owner.kind != Sym::Kind::kModule) {
        return absl::InvalidArgumentError(absl::StrCat("attribute '", name, "' read from a non-module in ", Where(module)));
      }
      c10::IValue attr = owner.object->getAttr(name);
      const std::string path = owner.path.empty() ? name : absl::StrCat(owner.path, ".", name);
      if (attr.isObject() && attr.toObjectRef().type()->is_module()) {
        Sym s;
        s.kind = Sym::Kind::kModule;
        s.object = attr.toObject();
        s.path = path;
        (*env)[node->output()] = s;
      } else {
        if (attr.isTensor()) attributes_.emplace_back(attr.toTensor(), path);
        (*env)[node->output()] = ConstantSym(attr, path);
      }
      return absl::OkStatus();
    }
    if (kind == c10::prim::CallMethod) {
      const Sym& self = in(0);
      const std::string name = node->s(c10::attr::name);
      if (self.kind != Sym::Kind::kModule) {
        return absl::InvalidArgumentError(absl::StrCat("method '", name, "' called on a non-module in ", Where(module)));
      }
      jit::Function* fn = self.object->type()->findMethod(name);
      if (fn == nullptr) return absl::InvalidArgumentError(absl::StrCat("no method '", name, "' on '", self.path, "'"));
      std::vector<Sym> args;
      for (size_t i = 0; i < node->inputs().size(); ++i) args.push_back(in(i));
      std::vector<Sym> outs;
      QUANTD_RETURN_IF_ERROR(WalkGraph(*jit::toGraphFunction(*fn).graph(), args, self, &outs));
      return BindOutputs(node, outs, env);
    }
    if (kind == c10::prim::CallFunction) {
      const Sym& fn = in(0);
      if (fn.kind != Sym::Kind::kFunction) return absl::InvalidArgumentError(absl::StrCat("indirect call in ", Where(module)));
      std::vector<Sym> args;
      for (size_t i = 1; i < node->inputs().size(); ++i) args.push_back(in(i));
      std::vector<Sym> outs;
      functions_.push_back(fn.function->qualname().qualifiedName());
      const absl::Status walked = WalkGraph(*jit::toGraphFunction(*fn.function).graph(), args, module, &outs);
      functions_.pop_back();
      QUANTD_RETURN_IF_ERROR(walked);
      return BindOutputs(node, outs, env);
    }
    if (kind == c10::prim::If) {
      const Sym& cond = in(0);
      const jit::Block* taken = nullptr;
      if (cond.IsConstant() && cond.constant.isBool()) {
        taken = node->blocks()[cond.constant.toBool() ? 0 : 1];
      } else if (BlockRaises(node->blocks()[0]) && !BlockRaises(node->blocks()[1])) {
        taken = node->blocks()[1];  // an input check: assume it passes
      } else if (BlockRaises(node->blocks()[1]) && !BlockRaises(node->blocks()[0])) {
        taken = node->blocks()[0];
      } else if (const std::string library = PyTorchCode(module); !library.empty()) {
        return absl::InvalidArgumentError(absl::StrCat(Where(module), " runs ", library, UnfollowedLibraryCode()));
      } else {
        return absl::InvalidArgumentError(
            absl::StrCat("data-dependent control flow (prim::If) in ", Where(module), " is not supported"));
      }
      QUANTD_RETURN_IF_ERROR(WalkBlock(taken, env, module));
      std::vector<Sym> outs;
      for (const jit::Value* v : taken->outputs()) outs.push_back(env->at(v));
      return BindOutputs(node, outs, env);
    }
    if (kind == c10::prim::Loop) {
      if (const std::string library = PyTorchCode(module); !library.empty()) {
        return absl::InvalidArgumentError(absl::StrCat(Where(module), " runs ", library, UnfollowedLibraryCode()));
      }
      return absl::InvalidArgumentError(absl::StrCat("loops (prim::Loop) in ", Where(module), " are not supported"));
    }
    // Most often a dict output ({"logits": y}): say what quantd takes.
    if (kind == c10::prim::DictConstruct) {
      return absl::InvalidArgumentError(absl::StrCat(
          "a dict (prim::DictConstruct) in ", Where(module),
          ": quantd takes models whose forward computes and returns one tensor (return the tensor itself)"));
    }
    if (kind == c10::prim::RaiseException) {
      return absl::InvalidArgumentError(absl::StrCat("the model raises an exception in ", Where(module)));
    }
    if (kind == c10::prim::ListConstruct || kind == c10::prim::TupleConstruct) {
      const bool is_list = kind == c10::prim::ListConstruct;
      bool all_constant = true;
      for (size_t i = 0; i < node->inputs().size(); ++i) all_constant = all_constant && in(i).IsConstant();
      if (all_constant) {
        std::vector<c10::IValue> items;
        for (size_t i = 0; i < node->inputs().size(); ++i) items.push_back(in(i).constant);
        if (is_list) {
          c10::impl::GenericList list(node->output()->type()->expectRef<c10::ListType>().getElementType());
          for (auto& item : items) list.push_back(std::move(item));
          (*env)[node->output()] = ConstantSym(list);
        } else {
          (*env)[node->output()] = ConstantSym(c10::ivalue::Tuple::create(std::move(items)));
        }
        return absl::OkStatus();
      }
      Sym s;
      s.kind = is_list ? Sym::Kind::kList : Sym::Kind::kTuple;
      s.type = node->output()->type();
      for (size_t i = 0; i < node->inputs().size(); ++i) s.items.push_back(in(i));
      (*env)[node->output()] = s;
      return absl::OkStatus();
    }
    if (kind == c10::prim::ListUnpack || kind == c10::prim::TupleUnpack) {
      const Sym& src = in(0);
      if (src.kind == Sym::Kind::kList || src.kind == Sym::Kind::kTuple) {
        if (src.items.size() != node->outputs().size()) return absl::InvalidArgumentError("unpack size mismatch");
        for (size_t i = 0; i < src.items.size(); ++i) (*env)[node->outputs()[i]] = src.items[i];
        return absl::OkStatus();
      }
      // A list an op makes at run time (a, b = x.chunk(2, 1), torch.split):
      // each item is read out by its own node. The items of a list of views
      // are views of what the list views (the importer's view tracking then
      // sees writes through them).
      if (const char* item_ir = kind == c10::prim::ListUnpack && src.kind == Sym::Kind::kValue
                                    ? ListItemIr(node->input(0)->type())
                                    : nullptr;
          item_ir != nullptr) {
        QUANTD_ASSIGN_OR_RETURN(const jit::Node* item, CanonicalNode(item_ir));
        for (size_t i = 0; i < node->outputs().size(); ++i) {
          QUANTD_RETURN_IF_ERROR(EmitAs(node, item, {src, ConstantSym(static_cast<int64_t>(i))}, {node->outputs()[i]},
                                        env, module));
        }
        return absl::OkStatus();
      }
    }
    if (kind == c10::prim::TupleIndex && in(0).kind == Sym::Kind::kTuple && in(1).IsConstant() &&
        in(1).constant.isInt()) {
      // Python's indexing: -1 is the last item.
      const auto size = static_cast<int64_t>(in(0).items.size());
      int64_t index = in(1).constant.toInt();
      if (index < 0) index += size;
      if (index < 0 || index >= size) {
        return absl::InvalidArgumentError(absl::StrCat("tuple index ", in(1).constant.toInt(),
                                                       " is out of range for a tuple of ", size, " in ",
                                                       Where(module)));
      }
      (*env)[node->output()] = in(0).items[static_cast<size_t>(index)];
      return absl::OkStatus();
    }
    if (kind == c10::prim::unchecked_cast) {
      (*env)[node->output()] = in(0);
      return absl::OkStatus();
    }
    if (kind == c10::prim::Uninitialized) {
      (*env)[node->output()] = ConstantSym(c10::IValue());
      return absl::OkStatus();
    }
    if (kind == c10::aten::warn || kind == c10::prim::Print) return absl::OkStatus();

    bool all_constant = true;
    for (size_t i = 0; i < node->inputs().size(); ++i) {
      const Sym& s = in(i);
      if (s.kind == Sym::Kind::kModule || s.kind == Sym::Kind::kFunction) {
        return absl::InvalidArgumentError(
            absl::StrCat("op ", kind.toQualString(), " takes a module or function in ", Where(module)));
      }
      all_constant = all_constant && s.IsConstant();
    }
    if (all_constant && node->outputs().size() > 0 && !node->kind().is_prim()) {
      // Folding runs the op once, here: right for pure ops on module
      // attributes (e.g. reading a buffer's shape), wrong for one that
      // PyTorch runs anew at every call with another outcome.
      if (node->isNondeterministic()) {
        return absl::InvalidArgumentError(
            absl::StrCat("op ", kind.toQualString(), " in ", Where(module),
                         " is random, and quantd would draw it once for every run; make it an input of forward"));
      }
      if (const c10::FunctionSchema* schema = node->maybeSchema(); schema != nullptr) {
        for (size_t i = 0; i < schema->arguments().size() && i < node->inputs().size(); ++i) {
          const c10::AliasInfo* alias = schema->arguments()[i].alias_info();
          const Sym& written = in(i);
          if (alias == nullptr || !alias->isWrite()) continue;
          // A module attribute, or a view of one (self.w[0].add_(1)).
          std::string state = written.constant_name;
          if (state.empty() && written.constant.isTensor()) state = AttributeViewedBy(written.constant.toTensor());
          if (!state.empty()) {
            return absl::InvalidArgumentError(absl::StrCat(
                "op ", kind.toQualString(), " in ", Where(module), " changes the module's state (", state,
                ") at every call, which quantd would do once, when it imports the model: "
                "stateful models are not supported",
                absl::EndsWith(state, "num_batches_tracked")
                    ? " (a BatchNorm counting its batches: the model was traced in training mode; call "
                      "model.eval() before torch.jit.trace)"
                    : ""));
          }
          // A tensor made at import (torch.zeros(...)), changed at import
          // too: ops emitted before the write read it as it was.
          if (written.constant.isTensor()) KeepWhatEarlierReadersRead(written.constant.toTensor());
        }
      }
      return FoldWithOperator(node, env, module);
    }
    if (all_constant && node->kind().is_prim()) return FoldWithOperator(node, env, module);
    if (const std::optional<size_t> flag = TrainingFlag(kind.toQualString()); flag && *flag < node->inputs().size()) {
      const Sym& training = in(*flag);
      if (training.IsConstant() && training.constant.isBool() && training.constant.toBool()) {
        return absl::InvalidArgumentError(absl::StrCat(
            "op ", kind.toQualString(), " in ", Where(module),
            " runs in training mode (random at every call, or normalizing by each batch's statistics): "
            "if the model was traced, call model.eval() before torch.jit.trace"));
      }
    }
    return Emit(node, env, module);
  }

  absl::Status BindOutputs(const jit::Node* node, const std::vector<Sym>& outs, Env* env) {
    if (outs.size() != node->outputs().size()) return absl::InternalError("call arity mismatch");
    for (size_t i = 0; i < outs.size(); ++i) (*env)[node->outputs()[i]] = outs[i];
    return absl::OkStatus();
  }

  absl::Status FoldWithOperator(const jit::Node* node, Env* env, const Sym& module) {
    if (node->maybeOperator() == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat("unsupported TorchScript op ", node->kind().toQualString(), " in ", Where(module)));
    }
    return TorchTry(absl::StrCat("folding ", node->kind().toQualString(), " in ", Where(module)), [&]() {
      jit::Operation op = node->getOperation();
      jit::Stack stack;
      for (const jit::Value* v : node->inputs()) stack.push_back(env->at(v).constant);
      op(stack);
      if (stack.size() != node->outputs().size()) return absl::InternalError("folded op arity mismatch");
      for (size_t i = 0; i < stack.size(); ++i) (*env)[node->outputs()[i]] = ConstantSym(stack[i]);
      return absl::OkStatus();
    });
  }

  absl::StatusOr<Operand> ToOperand(const Sym& s, const std::string& where) {
    switch (s.kind) {
      case Sym::Kind::kValue: {
        const int value = Current(s.value);
        auto write = stale_.find(value);
        if (write == stale_.end()) write = stale_.find(BaseOf(value));
        if (write != stale_.end()) {
          return absl::InvalidArgumentError(absl::StrCat(
              where, " reads a tensor that ", write->second,
              " changed in place through a view of it (a slice, view, reshape, ...); quantd cannot follow such a "
              "write into int8: write it out of place (torch.cat, torch.where, ...)"));
        }
        return Operand::Value(value);
      }
      case Sym::Kind::kConstant: return Operand::Constant(s.constant, s.constant_name);
      case Sym::Kind::kList:
      case Sym::Kind::kTuple: {
        if (s.kind == Sym::Kind::kTuple && where != "model output") {
          return absl::InvalidArgumentError(absl::StrCat("tuples of tensors as op inputs are not supported (", where, ")"));
        }
        Operand o;
        o.kind = Operand::Kind::kList;
        o.list_type = s.type;
        for (const Sym& item : s.items) {
          QUANTD_ASSIGN_OR_RETURN(Operand sub, ToOperand(item, where));
          o.items.push_back(std::move(sub));
        }
        return o;
      }
      default:
        return absl::InvalidArgumentError(absl::StrCat("a module or function is used as a value (", where, ")"));
    }
  }

  absl::Status Emit(const jit::Node* node, Env* env, const Sym& module) {
    if (node->maybeOperator() == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat("unsupported TorchScript op ", node->kind().toQualString(), " in ", Where(module)));
    }
    std::vector<Sym> args;
    for (const jit::Value* v : node->inputs()) args.push_back(env->at(v));
    const jit::Node* op_node = node;
    if (std::optional<CanonicalOp> scripted = ScriptedForm(node, args, module.path)) {
      QUANTD_ASSIGN_OR_RETURN(op_node, CanonicalNode(scripted->ir));
      args = std::move(scripted->args);
    }
    return EmitAs(node, op_node, std::move(args), {node->outputs().begin(), node->outputs().end()}, env, module);
  }

  // One IR node running `op_node` on `args`, for `source` (the model's node
  // it stands for: its kind names it in errors), whose results are `outputs`.
  absl::Status EmitAs(const jit::Node* node, const jit::Node* op_node, std::vector<Sym> args,
                      const std::vector<const jit::Value*>& outputs, Env* env, const Sym& module) {
    Node ir;
    ir.id = static_cast<int>(graph_->nodes.size());
    ir.kind = ClassifyOp(op_node, args);
    ir.module_path = module.path;
    ir.module_type = module.object ? UnmangledTypeName(module.object->type()) : "";
    ir.module_is_leaf = true;
    for (const c10::TypePtr& attr : module.object->type()->containedTypes()) {
      if (auto cls = attr->cast<c10::ClassType>(); cls && cls->is_module()) ir.module_is_leaf = false;
    }
    ir.jit_node = const_cast<jit::Node*>(op_node);
    for (const Sym& s : args) {
      QUANTD_ASSIGN_OR_RETURN(Operand o, ToOperand(s, absl::StrCat(node->kind().toQualString(), " in ", Where(module))));
      ir.inputs.push_back(std::move(o));
    }
    for (const jit::Value* out : outputs) {
      Sym s;
      s.kind = Sym::Kind::kValue;
      s.value = graph_->NewValue();
      ir.outputs.push_back(s.value);
      (*env)[out] = s;
    }
    // An op that writes its first argument (relu_, hardtanh_, add_, sub_,
    // an nn.ReLU(inplace=True) called as a statement): every later reader of
    // that tensor, in any frame, reads the op's output instead. The graph
    // stays pure, and no kernel that makes a new tensor loses the write.
    if (const c10::FunctionSchema* schema = op_node->maybeSchema();
        schema != nullptr && !schema->arguments().empty() && !ir.outputs.empty() && !ir.inputs.empty()) {
      const c10::AliasInfo* alias = schema->arguments()[0].alias_info();
      const bool writes_first = alias != nullptr && alias->isWrite();
      const std::string op = absl::StrCat("'", node->kind().toQualString(), "' in ", Where(module));
      if (writes_first && (ir.inputs[0].kind == Operand::Kind::kList ||
                           (ir.inputs[0].kind == Operand::Kind::kConstant && ir.inputs[0].constant.isList()))) {
        // A list is rebuilt from its items at each use, so the change would be
        // lost (or, on a list made at import, pile up from run to run).
        return absl::InvalidArgumentError(absl::StrCat(
            op, " changes a list in place, which quantd does not follow: build the list in one expression "
                "(torch.cat([a, b], 1), not feats.append(b))"));
      }
      if (writes_first && ir.inputs[0].kind == Operand::Kind::kConstant && ir.inputs[0].constant.isTensor() &&
          ir.inputs[0].constant_name.empty()) {
        // Folded at import (torch.zeros(...)) and shared by every run: the
        // write would carry over from one run (and request) to the next. (A
        // module's buffer, named, persists across calls in PyTorch too.)
        return absl::InvalidArgumentError(absl::StrCat(
            op, " writes in place into a tensor made of constants, which quantd computes once for every run; "
                "use the op that returns a new tensor (add instead of add_, ...)"));
      }
      if (ir.inputs[0].kind == Operand::Kind::kValue) {
        const int first = ir.inputs[0].value;
        // feats[0].relu_() on a list built in forward: eager PyTorch's list
        // sees the write, TorchScript 1.13's does not (the scripted model
        // computes another function than its Python source), and int8's cat
        // would read the unwritten item either way.
        if (writes_first && picked_from_list_.count(first) > 0) {
          return absl::InvalidArgumentError(absl::StrCat(
              op, " writes in place into an item of a list, which eager PyTorch and TorchScript compute "
                  "differently (TorchScript's list does not see the write): build the list from "
                  "what it should hold ([a.relu(), b])"));
        }
        if (writes_first) {
          // Through a view (a slice, view, reshape, ...): the write changes
          // the tensor viewed too, which int8 keeps as its own copy.
          if (auto base = view_base_.find(first); base != view_base_.end()) stale_[base->second] = op;
          // And views of what it writes, made before the write, see it too.
          for (const auto& [view, base] : view_base_) {
            if (base == BaseOf(first) && view != first) stale_[view] = op;
          }
          renamed_[first] = ir.outputs[0];
        } else if (alias != nullptr && ir.outputs.size() == 1 && schema->returns().size() == 1 &&
                   schema->returns()[0].alias_info() != nullptr) {
          view_base_[ir.outputs[0]] = BaseOf(first);  // a view of its first argument (or of what that views)
        }
      }
    }
    if (ir.inputs.size() == 2 && ir.inputs[0].kind == Operand::Kind::kList && ir.outputs.size() == 1 &&
        std::string(op_node->kind().toQualString()) == "aten::__getitem__") {
      picked_from_list_.insert(ir.outputs[0]);
    }
    graph_->nodes.push_back(std::move(ir));
    return absl::OkStatus();
  }

  // The module attribute `tensor` is or views ("" if none).
  std::string AttributeViewedBy(const at::Tensor& tensor) const {
    for (const auto& [attribute, path] : attributes_) {
      if (attribute.defined() && tensor.defined() && tensor.is_alias_of(attribute)) return path;
    }
    return "";
  }

  // Gives each emitted op that reads `written` (or a view of it) its own copy
  // of the values it read, before a fold changes them in place.
  void KeepWhatEarlierReadersRead(const at::Tensor& written) {
    std::function<void(Operand*)> keep = [&](Operand* o) {
      if (o->kind == Operand::Kind::kList) {
        for (Operand& item : o->items) keep(&item);
        return;
      }
      if (o->kind != Operand::Kind::kConstant) return;
      if (o->constant.isTensor()) {
        const at::Tensor& read = o->constant.toTensor();
        if (read.defined() && read.is_alias_of(written)) o->constant = read.clone();
      } else if (o->constant.isTensorList()) {
        c10::List<at::Tensor> copy;
        for (const at::Tensor& read : o->constant.toTensorVector()) {
          copy.push_back(read.defined() && read.is_alias_of(written) ? read.clone() : read);
        }
        o->constant = copy;
      }
    };
    for (Node& n : graph_->nodes) {
      for (Operand& o : n.inputs) keep(&o);
    }
  }

  // The tensor `value` views, or itself.
  int BaseOf(int value) const {
    auto it = view_base_.find(value);
    return it == view_base_.end() ? value : it->second;
  }

  // The value a reader gets for `value`: its last in-place write's output.
  int Current(int value) const {
    for (auto it = renamed_.find(value); it != renamed_.end(); it = renamed_.find(value)) value = it->second;
    return value;
  }

  // The node of a one-op graph, parsed once per op and kept in the Graph.
  absl::StatusOr<const jit::Node*> CanonicalNode(const char* ir) {
    auto it = canonical_.find(ir);
    if (it != canonical_.end()) return it->second;
    auto g = std::make_shared<jit::Graph>();
    jit::parseIR(ir, g.get());
    const jit::Node* op = nullptr;
    for (const jit::Node* n : g->nodes()) op = n;
    if (op == nullptr || op->maybeOperator() == nullptr) return absl::InternalError("no operator for a rewritten op");
    graph_->canonical_ops.push_back(std::move(g));
    canonical_[ir] = op;
    return op;
  }

  // Drops side-effect-free nodes whose results nothing reads, such as the
  // shape queries behind elided input checks, and renumbers the rest.
  void RemoveDeadNodes() {
    std::vector<bool> live_value(static_cast<size_t>(graph_->num_values), false);
    std::vector<int> read;
    for (const Operand& o : graph_->outputs) CollectValues(o, &read);
    for (int v : read) live_value[static_cast<size_t>(v)] = true;
    std::vector<bool> keep(graph_->nodes.size(), false);
    for (size_t i = graph_->nodes.size(); i-- > 0;) {
      const Node& n = graph_->nodes[i];
      bool live = n.jit_node->schema().is_mutable();
      for (int out : n.outputs) live = live || live_value[static_cast<size_t>(out)];
      if (!live) continue;
      keep[i] = true;
      read.clear();
      for (const Operand& in : n.inputs) CollectValues(in, &read);
      for (int v : read) live_value[static_cast<size_t>(v)] = true;
    }
    std::vector<Node> kept;
    for (size_t i = 0; i < graph_->nodes.size(); ++i) {
      if (!keep[i]) continue;
      kept.push_back(std::move(graph_->nodes[i]));
      kept.back().id = static_cast<int>(kept.size()) - 1;
    }
    graph_->nodes = std::move(kept);
  }

  // A leaf module that emitted exactly one op is named by its path (it is
  // what a fusion spec names); other ops are "path:op", with a counter when
  // an op repeats in the same module.
  void NameNodes() {
    std::map<std::string, int> per_module;
    for (const Node& n : graph_->nodes) per_module[n.module_path]++;
    std::map<std::string, int> seen;
    for (Node& n : graph_->nodes) {
      const std::string op = n.jit_node->kind().toUnqualString();
      if (per_module[n.module_path] == 1 && n.module_is_leaf && !n.module_path.empty()) {
        n.name = n.module_path;
        continue;
      }
      std::string base = n.module_path.empty() ? op : absl::StrCat(n.module_path, ":", op);
      const int index = seen[base]++;
      n.name = index == 0 ? base : absl::StrCat(base, "_", index);
    }
  }

  Graph* graph_;
  int depth_ = 0;
  std::vector<std::string> functions_;  // qualified names of the functions being walked, outermost first
  std::map<const char*, const jit::Node*> canonical_;
  std::map<int, int> renamed_;  // value -> the output of an op that wrote it in place
  std::map<int, int> view_base_;  // a view's value -> the value it views
  std::set<int> picked_from_list_;  // values __getitem__ read out of a list
  std::map<int, std::string> stale_;  // a value written through a view of it -> the op that wrote
  std::vector<std::pair<at::Tensor, std::string>> attributes_;  // module tensors read, with their paths
};

}  // namespace

std::string UnmangledTypeName(const c10::ClassTypePtr& type) {
  if (!type || !type->name()) return "";
  static const std::regex kMangle(R"(___torch_mangle_\d+\.)");
  std::string name = std::regex_replace(type->name()->qualifiedName(), kMangle, "");
  const std::string prefix = "__torch__.";
  if (name.rfind(prefix, 0) == 0) name = name.substr(prefix.size());
  return name;
}

namespace {

// The first op of an already quantized model (quantd's artifacts, PyTorch's
// converted models) in `module` or its submodules, if any. Such a model went
// through every phase as if FP32 and failed only when stored, on its packed
// weights ("cannot write a constant of type Object").
std::optional<std::string> QuantizedOpIn(const jit::Module& module) {
  static const std::set<std::string> kQuantizing = {"aten::quantize_per_tensor", "aten::quantize_per_channel"};
  for (const jit::Module& m : module.modules()) {
    for (const jit::Method& method : m.get_methods()) {
      std::vector<const jit::Block*> blocks = {method.graph()->block()};
      while (!blocks.empty()) {
        const jit::Block* block = blocks.back();
        blocks.pop_back();
        for (const jit::Node* node : block->nodes()) {
          const std::string kind = node->kind().toQualString();
          if (absl::StartsWith(kind, "quantized::") || kQuantizing.count(kind) > 0) return kind;
          for (const jit::Block* inner : node->blocks()) blocks.push_back(inner);
        }
      }
    }
  }
  return std::nullopt;
}

}  // namespace

absl::StatusOr<Graph> ImportTorchScript(torch::jit::Module module) {
  Graph graph;
  QUANTD_RETURN_IF_ERROR(TorchTry("switching the model to eval mode", [&]() {
    module.eval();
    return absl::OkStatus();
  }));
  std::optional<std::string> quantized;
  QUANTD_RETURN_IF_ERROR(TorchTry("reading the model's methods", [&]() {
    quantized = QuantizedOpIn(module);
    return absl::OkStatus();
  }));
  if (quantized.has_value()) {
    return absl::InvalidArgumentError(absl::StrCat("the model is already quantized (it calls ", *quantized,
                                                   "): give the FP32 model it was made from"));
  }
  graph.module = std::move(module);
  Importer importer(&graph);
  absl::Status status = TorchTry("reading the model's forward", [&]() { return importer.Run(); });
  if (!status.ok()) return status;
  return graph;
}

namespace {
absl::StatusOr<Graph> ImportTorchScriptFileUnguarded(const std::string& path);
}  // namespace

absl::StatusOr<Graph> ImportTorchScriptFile(const std::string& path) {
  return GuardEntryPoint(absl::StrCat("importing ", path), [&]() -> absl::StatusOr<Graph> {
    return ImportTorchScriptFileUnguarded(path);
  });
}

namespace {

absl::StatusOr<Graph> ImportTorchScriptFileUnguarded(const std::string& path) {
  torch::jit::Module module;
  absl::Status loaded = TorchTry(absl::StrCat("loading TorchScript model ", path), [&]() {
    try {
      module = torch::jit::load(path);
    } catch (const torch::jit::ErrorReport&) {
      // The archive's code does not compile here. Its message is rendered
      // inside what(), which is noexcept and unpickles the archive's debug
      // info: from a corrupt archive that throws, and the process ends
      // (found by torchscript_import_fuzzer). So what() is not called.
      return absl::InvalidArgumentError(absl::StrCat(
          "loading TorchScript model ", path,
          ": its code does not compile in this LibTorch (" TORCH_VERSION
          "): saved by a newer PyTorch, or a damaged archive"));
    }
    return absl::OkStatus();
  });
  if (!loaded.ok()) return absl::InvalidArgumentError(loaded.message());
  return ImportTorchScript(std::move(module));
}

}  // namespace

}  // namespace quantd::engine
