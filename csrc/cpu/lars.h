// LARS (docs/internals.md, Note [LARS]; mmpretrain's `LARS`) for the CPU driver (Note [one
// driver], ops.cpp), a two-stage algorithm (Note [two stages], csrc/algorithms.h): stage 1 sums
// |p|^2 and |g|^2 per tensor, finish() turns them into the tensor's lr, stage 2 is mmpretrain's
// update op for op (Note [torch's rounding] in adam.h). Included inside namespace
// fusedopt::cpu::FUSEDOPT_ISA.

struct Lars {
  static constexpr int kId = kLars;
  static constexpr bool kTwoStage = true;
  static constexpr int kMinStates = 0, kMaxStates = 1;   // [momentum_buffer]

  struct Scalars {
    double grad_scale, grad_coef, weight_decay, momentum, one_minus_dampening, lr, eta, eps;
    double actual_lr;   // lr * local_lr (finish)
    bool exclude, seed, nesterov;
  };

  static bool prepare(TensorStep& t, const double* row, float step, int64_t flags,
                      StepContext& c) {
    Scalars s{};
    s.grad_scale = c.grad_scale;
    s.grad_coef = c.clip_coef * ((flags & lars::kMaximize) ? -1 : 1);
    s.weight_decay = row[kWeightDecay];
    s.momentum = row[lars::kMomentumCol];
    s.one_minus_dampening = 1.0 - row[lars::kDampening];
    s.lr = row[kLr];
    s.eta = row[lars::kEta];
    s.eps = row[lars::kEps];
    s.actual_lr = s.lr;                 // local_lr = 1 unless finish() says otherwise
    s.exclude = row[lars::kExclude] != 0;
    s.seed = step == 0.0f;              // mmpretrain: the buffer is d_p's clone the first time
    s.nesterov = (flags & lars::kNesterov) != 0;
    t.set_scalars(s);
    return !s.exclude;                  // an excluded tensor's norms are never read
  }

  // sums: |p|^2, |g|^2 (the scaled g). The norms and the local lr in double, as the reference
  // (fusedopt/algorithms/lars.py) forms them; mmpretrain's norms are rounded to the compute
  // type first, a difference well inside fp32's tolerance.
  static void finish(TensorStep& t, const double* sums) {
    Scalars& s = t.scalars_as<Scalars>();
    if (s.exclude) return;
    const double wn = std::sqrt(sums[0]), gn = std::sqrt(sums[1]);
    const double local_lr =
        wn == 0 || gn == 0 ? 1.0 : s.eta * wn / (gn + s.weight_decay * wn + s.eps);
    s.actual_lr = local_lr * s.lr;
  }

  template <class C>
  struct Math {
    C grad_scale, grad_coef, weight_decay, momentum, one_minus_dampening, actual_lr;
    bool seed, nesterov;

    explicit Math(const Scalars& s)
        : grad_scale(static_cast<C>(s.grad_scale)),
          grad_coef(static_cast<C>(s.grad_coef)),
          weight_decay(static_cast<C>(s.weight_decay)),
          momentum(static_cast<C>(s.momentum)),
          one_minus_dampening(static_cast<C>(s.one_minus_dampening)),
          actual_lr(static_cast<C>(s.actual_lr)),
          seed(s.seed),
          nesterov(s.nesterov) {}

    static constexpr int kTermReads = 1;   // stage 1 reads the param (and the grad) only

    // stage 1: |p|^2 and |g|^2 (two_stage.h)
    template <class V, int R>
    void terms(V g, const V (&x)[R], V (&out)[kSums]) const {
      out[0] = x[0];
      out[1] = g * V::set1(grad_scale) * V::set1(grad_coef);
    }

    // x: param[, momentum_buffer]
    template <class V, int K>
    void operator()(V g, V (&x)[K]) const {
      V& p = x[0];
      g = g * V::set1(grad_scale) * V::set1(grad_coef);    // unscale, then clip (and maximize)
      V d = fma(p, V::set1(weight_decay), g) * V::set1(actual_lr);   // add(p, alpha=wd).mul(lr)
      if constexpr (K == 2) {
        V& buf = x[1];
        // buf.mul_(momentum).add_(d_p, alpha=1 - dampening); the first step clones d_p
        buf = seed ? d : fma(d, V::set1(one_minus_dampening), buf * V::set1(momentum));
        d = nesterov ? fma(buf, V::set1(momentum), d) : buf;   // d_p.add(buf, alpha=momentum)
      }
      p = p - d;                                             // p.add_(-d_p)
    }
  };
};
