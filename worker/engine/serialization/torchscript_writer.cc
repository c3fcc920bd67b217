#include "worker/engine/serialization/torchscript_writer.h"

#include <torch/csrc/jit/frontend/resolver.h>
#include <torch/csrc/jit/frontend/sugared_value.h>
#include <torch/csrc/jit/serialization/export.h>

#include <cctype>
#include <cstdio>
#include <map>
#include <cmath>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "worker/engine/base/status_macros.h"
#include "worker/engine/base/torch_status.h"

namespace quantd::engine {
namespace {

namespace jit = torch::jit;

// `ops.<namespace>.<op>` in the generated source, as TorchScript's own
// importer resolves it.
struct OpsNamespaces : public jit::SugaredValue {
  std::string kind() const override { return "ops"; }
  std::shared_ptr<jit::SugaredValue> attr(const jit::SourceRange&, jit::GraphFunction&, const std::string& field) override {
    return std::make_shared<jit::BuiltinModule>(field);
  }
};

struct ArtifactResolver : public jit::Resolver {
  std::shared_ptr<jit::SugaredValue> resolveValue(const std::string& name, jit::GraphFunction&,
                                                  const jit::SourceRange&) override {
    if (name == "torch") return std::make_shared<jit::BuiltinModule>("aten");
    if (name == "ops") return std::make_shared<OpsNamespaces>();
    return nullptr;
  }
  c10::TypePtr resolveType(const std::string&, const jit::SourceRange&) override { return nullptr; }
};

std::string Identifier(const std::string& name) {
  std::string out;
  for (char c : name) out.push_back(std::isalnum(static_cast<unsigned char>(c)) ? c : '_');
  if (out.empty() || std::isdigit(static_cast<unsigned char>(out[0]))) out = "_" + out;
  return out;
}

std::string DoubleLiteral(double v) {
  // TorchScript's compiler knows no `inf` or `nan` names; float("...") it
  // folds to the constant.
  if (std::isnan(v)) return "float(\"nan\")";
  if (std::isinf(v)) return v > 0 ? "float(\"inf\")" : "float(\"-inf\")";
  char buf[40];
  std::snprintf(buf, sizeof(buf), "%.17g", v);
  std::string s = buf;
  if (s.find_first_of(".eE") == std::string::npos && s.find("inf") == std::string::npos && s.find("nan") == std::string::npos) {
    s += ".0";
  }
  return s;
}

// `out = x` with its codes clamped to the bounds' codes, the bounds quantized
// as LibTorch's quantized clamp quantizes them (a missing bound: open).
std::string ClampCodes(const std::string& out, const std::string& x, const std::optional<double>& min,
                       const std::optional<double>& max) {
  // Neither bound (both infinite or past kOpenClampBound): the runtime keeps
  // the codes, and torch.clamp with two None raises.
  if (!min && !max) return absl::StrCat(out, " = ", x);
  const std::string q = absl::StrCat("torch.q_scale(", x, "), torch.q_zero_point(", x, ")");
  auto code = [&](const std::optional<double>& bound) -> std::string {
    if (!bound) return "None";
    return absl::StrCat("torch.int_repr(torch.quantize_per_tensor(torch.tensor([", DoubleLiteral(*bound), "]), ", q,
                        ", ", x, ".dtype))");
  };
  return absl::StrCat(out, " = torch._make_per_tensor_quantized_tensor(torch.clamp(torch.int_repr(", x, "), ",
                      code(min), ", ", code(max), "), ", q, ")");
}

class SourceBuilder {
 public:
  explicit SourceBuilder(jit::Module* module) : module_(module) {}

  absl::StatusOr<std::string> Build(const Program& program) {
    std::vector<std::string> params;
    for (size_t i = 0; i < program.inputs.size(); ++i) {
      params.push_back(absl::StrCat(Slot(program.inputs[i]), ": ", program.input_types[i]->annotation_str()));
    }
    std::ostringstream src;
    src << "def forward(self, " << absl::StrJoin(params, ", ") << "):\n";
    for (const Instr& instr : program.instrs) {
      QUANTD_ASSIGN_OR_RETURN(std::string line, Line(instr));
      for (const std::string& typed : typed_lists_) src << "    " << typed << "\n";
      typed_lists_.clear();
      src << "    " << line << "\n";
    }
    std::vector<std::string> outs;
    for (const Operand& o : program.outputs) {
      QUANTD_ASSIGN_OR_RETURN(std::string text, Literal(o, nullptr));
      outs.push_back(text);
    }
    if (program.output_is_tuple) {
      src << "    return (" << absl::StrJoin(outs, ", ") << (outs.size() == 1 ? ",)" : ")") << "\n";
    } else {
      src << "    return " << outs.at(0) << "\n";
    }
    return src.str();
  }

 private:
  // Values are numbered in the order the code defines them, not by the
  // program's slot ids (which count values the importer dropped), so models
  // with the same program write the same source: a traced and a scripted
  // ResNet8 give the same artifact bytes.
  std::string Slot(int id) {
    auto it = names_.find(id);
    if (it == names_.end()) it = names_.emplace(id, absl::StrCat("v", names_.size())).first;
    return it->second;
  }

  std::string Attribute(const std::string& base, const c10::TypePtr& type, const c10::IValue& value) {
    std::string name = Identifier(base);
    for (int i = 1; module_->hasattr(name); ++i) name = absl::StrCat(Identifier(base), "_", i);
    module_->register_attribute(name, type, value);
    return absl::StrCat("self.", name);
  }

  absl::StatusOr<std::string> Line(const Instr& instr) {
    std::vector<std::string> outs;
    for (int o : instr.outputs) outs.push_back(Slot(o));
    const std::string lhs = absl::StrJoin(outs, ", ");
    auto in = [&](size_t i) { return Slot(instr.inputs[i].value); };
    auto qparams = [&]() {
      const std::string s = Attribute(instr.name + "_scale", c10::FloatType::get(), instr.scale);
      const std::string z = Attribute(instr.name + "_zero_point", c10::IntType::get(), instr.zero_point);
      return absl::StrCat(s, ", ", z);
    };
    const std::string relu = instr.relu ? "_relu" : "";
    switch (instr.kind) {
      case InstrKind::kQuantize:
        return absl::StrCat(lhs, " = torch.quantize_per_tensor(", in(0), ", ", qparams(), ", ",
                            static_cast<int>(instr.dtype), ")");
      case InstrKind::kDequantize:
        // Contiguous, as the runtime makes it: FP32 kernels (oneDNN's
        // convolutions, pooling) may round differently on another layout.
        return absl::StrCat(lhs, " = torch.dequantize(", in(0), ").contiguous()");
      case InstrKind::kConv2d:
      case InstrKind::kLinear: {
        const std::string packed = Attribute(instr.name + "_packed", instr.packed.type(), instr.packed);
        const char* op = instr.kind == InstrKind::kConv2d ? "conv2d" : "linear";
        std::string line =
            absl::StrCat(lhs, " = ops.quantized.", op, relu, "(", in(0), ", ", packed, ", ", qparams(), ")");
        // A fused bound the output's saturation does not make (convert.cc).
        if (instr.clamp_max) absl::StrAppend(&line, "\n    ", ClampCodes(lhs, lhs, std::nullopt, instr.clamp_max));
        return line;
      }
      case InstrKind::kAdd:
        return absl::StrCat(lhs, " = ops.quantized.add", relu, "(", in(0), ", ", in(1), ", ", qparams(), ")");
      case InstrKind::kQuantizedOp: {
        std::vector<std::string> args;
        for (const Operand& o : instr.inputs) {
          QUANTD_ASSIGN_OR_RETURN(std::string text, Literal(o, nullptr));
          args.push_back(text);
        }
        const std::string op = instr.quantized_op.substr(instr.quantized_op.find("::") + 2);
        return absl::StrCat(lhs, " = ops.quantized.", op, "(", absl::StrJoin(args, ", "), ", ", qparams(), ")");
      }
      case InstrKind::kPad: {
        QUANTD_ASSIGN_OR_RETURN(std::string pad, Literal(instr.inputs[1], nullptr));
        const std::string x = in(0);
        return absl::StrCat(lhs, " = torch._make_per_tensor_quantized_tensor(torch.constant_pad_nd(torch.int_repr(", x,
                            "), ", pad, ", torch.q_zero_point(", x, ")), torch.q_scale(", x, "), torch.q_zero_point(", x,
                            "))");
      }
      case InstrKind::kOp: {
        if (std::optional<ClampBounds> clamp = Int8ClampBounds(instr)) {
          // On the codes, as the runtime does: LibTorch 1.13's QNNPACK clamp
          // garbles channels-last tensors.
          return ClampCodes(lhs, in(0), clamp->min, clamp->max);
        }
        const c10::Symbol op = instr.jit_node->kind();
        std::vector<std::string> args;
        const auto& schema_args = instr.jit_node->schema().arguments();
        for (size_t i = 0; i < instr.inputs.size(); ++i) {
          const c10::Argument* arg = i < schema_args.size() ? &schema_args[i] : nullptr;
          QUANTD_ASSIGN_OR_RETURN(std::string text, Literal(instr.inputs[i], arg));
          // Keyword-only parameters (gelu's approximate=, ...) cannot be passed by position.
          args.push_back(arg != nullptr && arg->kwarg_only() ? absl::StrCat(arg->name(), "=", text) : text);
        }
        std::string overload_free = op.toUnqualString();
        std::string line = absl::StrCat(lhs, " = ops.", op.ns().toUnqualString(), ".", overload_free, "(",
                                        absl::StrJoin(args, ", "), ")");
        if (instr.relu) absl::StrAppend(&line, "\n    ", lhs, " = torch.relu(", lhs, ")");
        if (instr.relu && instr.clamp_max) {
          absl::StrAppend(&line, "\n    ", lhs, " = torch.clamp_max(", lhs, ", ", DoubleLiteral(*instr.clamp_max), ")");
        }
        return line;
      }
    }
    return absl::InternalError("unknown instruction");
  }

  absl::StatusOr<std::string> Literal(const Operand& o, const c10::Argument* arg) {
    if (o.kind == Operand::Kind::kValue) return Slot(o.value);
    if (o.kind == Operand::Kind::kList) {
      std::vector<std::string> items;
      for (const Operand& item : o.items) {
        QUANTD_ASSIGN_OR_RETURN(std::string text, Literal(item, nullptr));
        items.push_back(text);
      }
      if (o.list_type->kind() == c10::TypeKind::TupleType) {
        return absl::StrCat("(", absl::StrJoin(items, ", "), items.size() == 1 ? ",)" : ")");
      }
      return ListLiteral(items, arg);
    }
    return ConstantLiteral(o.constant, o.constant_name, arg);
  }

  // A list literal reads as List[<its items' type>]: for a parameter of
  // optional items (index's Tensor?[], x[idx]) the type is said, as newer
  // TorchScript no longer converts one into the other.
  std::string ListLiteral(const std::vector<std::string>& items, const c10::Argument* arg) {
    const std::string list = absl::StrCat("[", absl::StrJoin(items, ", "), "]");
    if (arg == nullptr) return list;
    const auto* list_type = arg->type()->castRaw<c10::ListType>();
    if (list_type == nullptr || list_type->getElementType()->kind() != c10::TypeKind::OptionalType) return list;
    return TypedList(arg->type(), list);
  }
  // A variable of `type` holding `list`, defined just before the line that
  // uses it (a module's define() knows no annotate()).
  std::string TypedList(const c10::TypePtr& type, const std::string& list) {
    const std::string name = absl::StrCat("t", typed_list_count_++);
    typed_lists_.push_back(absl::StrCat(name, " : ", type->annotation_str(), " = ", list));
    return name;
  }

  absl::StatusOr<std::string> ConstantLiteral(const c10::IValue& v, const std::string& name, const c10::Argument* arg) {
    if (v.isNone()) return std::string("None");
    if (v.isBool()) return std::string(v.toBool() ? "True" : "False");
    if (v.isInt()) return absl::StrCat(v.toInt());
    if (v.isDouble()) return DoubleLiteral(v.toDouble());
    if (v.isString()) {
      // TorchScript's lexer takes \n, \t and octal escapes (not \r or \x):
      // a raw line break failed define(), and the job, when it was stored.
      std::string s = "\"";
      for (char c : v.toStringRef()) {
        const auto byte = static_cast<unsigned char>(c);
        if (c == '"' || c == '\\') {
          s.push_back('\\');
          s.push_back(c);
        } else if (c == '\n') {
          s += "\\n";
        } else if (c == '\t') {
          s += "\\t";
        } else if (byte < 0x20 || byte == 0x7f) {
          absl::StrAppendFormat(&s, "\\%03o", byte);
        } else {
          s.push_back(c);
        }
      }
      return s + "\"";
    }
    if (v.isTensor()) {
      return Attribute(name.empty() ? "constant" : name, c10::TensorType::get(), v);
    }
    // torch.zeros(n, device=torch.device("cpu")) with a size known only at
    // run time keeps its device argument.
    if (v.isDevice()) return absl::StrCat("torch.device(\"", v.toDevice().str(), "\")");
    if (v.isList()) {
      auto list = v.toListRef();
      if (list.empty()) {
        if (arg == nullptr) return absl::InvalidArgumentError("cannot write an untyped empty list");
        return TypedList(arg->type(), "[]");
      }
      std::vector<std::string> items;
      for (const c10::IValue& item : list) {
        QUANTD_ASSIGN_OR_RETURN(std::string text, ConstantLiteral(item, name, nullptr));
        items.push_back(text);
      }
      return ListLiteral(items, arg);
    }
    if (v.isTuple()) {
      std::vector<std::string> items;
      for (const c10::IValue& item : v.toTupleRef().elements()) {
        QUANTD_ASSIGN_OR_RETURN(std::string text, ConstantLiteral(item, name, nullptr));
        items.push_back(text);
      }
      return absl::StrCat("(", absl::StrJoin(items, ", "), items.size() == 1 ? ",)" : ")");
    }
    return absl::InvalidArgumentError(absl::StrCat("cannot write a constant of type ", v.tagKind(), " into the artifact"));
  }

  jit::Module* module_;
  std::map<int, std::string> names_;
  // Typed list variables the line being written needs first.
  std::vector<std::string> typed_lists_;
  int typed_list_count_ = 0;
};

}  // namespace

absl::StatusOr<torch::jit::Module> ProgramToModule(const Program& program) {
  jit::Module module(c10::QualifiedName("__torch__.quantd.Int8Model"));
  SourceBuilder builder(&module);
  std::string source;
  QUANTD_RETURN_IF_ERROR(TorchTry("building the TorchScript artifact", [&]() -> absl::Status {
    QUANTD_ASSIGN_OR_RETURN(source, builder.Build(program));
    return absl::OkStatus();
  }));
  try {
    module.define(source, std::make_shared<ArtifactResolver>());
    module.eval();
  } catch (const std::exception& e) {
    // A TorchScript compile error quotes the generated line it rejects
    // (a few lines); keep those, not the whole source.
    std::vector<std::string> lines;
    for (absl::string_view line : absl::StrSplit(e.what(), '\n', absl::SkipWhitespace())) {
      if (lines.size() == 8) break;
      lines.emplace_back(line);
    }
    return absl::InternalError(absl::StrCat("building the TorchScript artifact: ",
                                            lines.empty() ? std::string("(no message)") : absl::StrJoin(lines, "\n")));
  }
  return module;
}

absl::StatusOr<std::string> SerializeProgram(const Program& program) {
  QUANTD_ASSIGN_OR_RETURN(jit::Module module, ProgramToModule(program));
  std::string bytes;
  absl::Status status = TorchTry("saving the TorchScript artifact", [&]() {
    std::ostringstream out;
    module.save(out);
    bytes = out.str();
    return absl::OkStatus();
  });
  if (!status.ok()) return status;
  return bytes;
}

}  // namespace quantd::engine
