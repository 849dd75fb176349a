// Lion (docs/internals.md, Note [Lion]) for the CPU driver (Note [one driver], ops.cpp): its
// per-tensor scalars and its element functor, op for op lion-pytorch's update as torch's CPU
// kernels round it (Note [torch's rounding] in adam.h). Included inside namespace
// fusedopt::cpu::FUSEDOPT_ISA.

// torch.sign lane by lane: 1, -1, or 0 for zeros and NaN (torch's CPU sign maps NaN to 0; every
// arithmetic op of the vector interface propagates NaN, so the lanes go through a plain array,
// which GCC turns back into compares and blends at the vector levels).
template <class V, class C>
V sign_of(V x) {
  C lanes[V::kLanes];
  x.to_array(lanes);
  for (C& c : lanes) c = c > C(0) ? C(1) : (c < C(0) ? C(-1) : C(0));
  return V::load(lanes);
}

struct Lion {
  static constexpr int kId = kLion;
  static constexpr bool kTwoStage = false;
  static constexpr int kMinStates = 1, kMaxStates = 1;   // exp_avg

  struct Scalars {
    double grad_scale, grad_coef, decay, beta1, one_minus_beta1, neg_lr, beta2, one_minus_beta2;
  };

  static bool prepare(TensorStep& t, const double* row, float, int64_t flags, StepContext& c) {
    const double lr = row[kLr], beta1 = row[lion::kBeta1], beta2 = row[lion::kBeta2];
    t.set_scalars(Scalars{c.grad_scale, c.clip_coef * ((flags & lion::kMaximize) ? -1 : 1),
                          1.0 - lr * row[kWeightDecay], beta1, 1.0 - beta1, -lr, beta2,
                          1.0 - beta2});
    return false;
  }

  template <class C>
  struct Math {
    C grad_scale, grad_coef, decay, beta1, one_minus_beta1, neg_lr, beta2, one_minus_beta2;

    explicit Math(const Scalars& s)
        : grad_scale(static_cast<C>(s.grad_scale)),
          grad_coef(static_cast<C>(s.grad_coef)),
          decay(static_cast<C>(s.decay)),
          beta1(static_cast<C>(s.beta1)),
          one_minus_beta1(static_cast<C>(s.one_minus_beta1)),
          neg_lr(static_cast<C>(s.neg_lr)),
          beta2(static_cast<C>(s.beta2)),
          one_minus_beta2(static_cast<C>(s.one_minus_beta2)) {}

    // x: param, exp_avg
    template <class V, int K>
    void operator()(V g, V (&x)[K]) const {
      V& p = x[0];
      V& m = x[1];
      g = g * V::set1(grad_scale) * V::set1(grad_coef);   // unscale, then clip (and maximize)
      p = p * V::set1(decay);                              // p.mul_(1 - lr*wd); 1 is exact
      // exp_avg.clone().mul_(beta1).add(g, alpha=1-beta1).sign_()
      V u = sign_of<V, C>(fma(g, V::set1(one_minus_beta1), m * V::set1(beta1)));
      p = fma(u, V::set1(neg_lr), p);                      // p.add_(u, alpha=-lr)
      m = fma(g, V::set1(one_minus_beta2), m * V::set1(beta2));   // mul_(beta2).add_(g, ...)
    }
  };
};
