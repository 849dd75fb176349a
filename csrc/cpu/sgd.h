// SGD (momentum, dampening, nesterov) for the CPU driver (Note [one driver], ops.cpp), op for op
// torch's sgd._single_tensor_sgd (Note [torch's rounding] in adam.h). Included inside namespace
// fusedopt::cpu::FUSEDOPT_ISA.

struct Sgd {
  static constexpr int kId = kSgd;
  static constexpr bool kTwoStage = false;
  static constexpr int kMinStates = 0, kMaxStates = 1;   // [momentum_buffer]

  struct Scalars {
    double grad_scale, grad_coef;   // as Adam::Scalars
    double weight_decay;            // 0 means "no decay" (torch skips the add entirely)
    double momentum, one_minus_dampening, neg_lr;
    bool seed;                      // first step: buffer = grad (torch's clone)
    bool nesterov;
  };

  static bool prepare(TensorStep& t, const double* row, float step, int64_t flags,
                      StepContext& c) {
    // SGD's counter only tells whether the buffer was seeded (torch's "buf is None")
    t.set_scalars(Scalars{c.grad_scale, c.clip_coef * ((flags & sgd::kMaximize) ? -1 : 1),
                          row[kWeightDecay], row[sgd::kMomentumCol], 1.0 - row[sgd::kDampening],
                          -row[kLr], step == 0.0f, (flags & sgd::kNesterov) != 0});
    return false;
  }

  template <class C>
  struct Math {
    C grad_scale, grad_coef, weight_decay, momentum, one_minus_dampening, neg_lr;
    bool use_decay, seed, nesterov;

    explicit Math(const Scalars& t)
        : grad_scale(static_cast<C>(t.grad_scale)),
          grad_coef(static_cast<C>(t.grad_coef)),
          weight_decay(static_cast<C>(t.weight_decay)),
          momentum(static_cast<C>(t.momentum)),
          one_minus_dampening(static_cast<C>(t.one_minus_dampening)),
          neg_lr(static_cast<C>(t.neg_lr)),
          use_decay(t.weight_decay != 0),
          seed(t.seed),
          nesterov(t.nesterov) {}

    // x: param[, momentum_buffer]
    template <class V, int K>
    void operator()(V g, V (&x)[K]) const {
      V& p = x[0];
      g = g * V::set1(grad_scale) * V::set1(grad_coef);     // unscale, then clip (and maximize)
      if (use_decay) g = fma(p, V::set1(weight_decay), g);   // grad.add(param, alpha=wd)
      if constexpr (K == 2) {
        V& buf = x[1];
        // buf.mul_(momentum).add_(grad, alpha=1 - dampening); the first step clones grad
        buf = seed ? g : fma(g, V::set1(one_minus_dampening), buf * V::set1(momentum));
        g = nesterov ? fma(buf, V::set1(momentum), g) : buf;
      }
      p = fma(g, V::set1(neg_lr), p);                        // param.add_(grad, alpha=-lr)
    }
  };
};
