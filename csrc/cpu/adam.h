// Adam / AdamW for the CPU driver (Note [one driver], ops.cpp): its per-tensor scalars and its
// element functor. Included inside namespace fusedopt::cpu::FUSEDOPT_ISA.
//
// Note [torch's rounding]: each line mirrors one op of torch.optim.adam._single_tensor_adam
// (and sgd._single_tensor_sgd) as torch's CPU kernels evaluate it, found by comparing bits
// against torch 2.13 on 1e5 random floats: `a.add(b, alpha=s)` is fma(b, s, a);
// `lerp_(e, w)` is fma(w, e - s, s) for |w| < 0.5 and fma(w - 1, e - s, e) otherwise;
// `addcmul_(t, t, value=s)` is fma(s*t, t, self); `addcdiv_(t1, t2, value=s)` is
// self + (s*t1)/t2 without fma; `x / scalar` is a true division. Python floats are rounded
// to the compute type first, as torch does. fp32 then agrees with torch to the ulp except
// where torch's sqrt is not correctly rounded (~17% of lanes, 1 ulp); ours is.

struct Adam {
  static constexpr int kId = kAdam;
  static constexpr bool kTwoStage = false;
  static constexpr int kMinStates = 2, kMaxStates = 3;   // exp_avg, exp_avg_sq[, max_exp_avg_sq]

  struct Scalars {
    double grad_scale;           // inv_scale, or 1 (multiplying by 1 is exact)
    double grad_coef;            // clip_coef (or 1), negated for maximize: -(a*b) == a*(-b)
    double l2;                   // weight_decay if L2 (Adam) decay applies, else 0
    double decay;                // 1 - lr*weight_decay if decoupled (AdamW), else 1
    double lerp_weight;          // 1 - beta1
    double beta2;
    double one_minus_beta2;
    double bias_correction2_sqrt;
    double neg_step_size;        // -lr / (1 - beta1^step)
    double eps;
  };

  static bool prepare(TensorStep& t, const double* row, float step, int64_t flags,
                      StepContext& c) {
    // torch: step_t += 1 in float32, then bias corrections from its value in double
    const double t_now = static_cast<double>(step + 1.0f);
    const bool decoupled = flags & adam::kDecoupled;
    const double lr = row[kLr], wd = row[kWeightDecay], beta1 = row[adam::kBeta1],
                 beta2 = row[adam::kBeta2];
    t.set_scalars(Scalars{c.grad_scale, c.clip_coef * ((flags & adam::kMaximize) ? -1 : 1),
                          decoupled ? 0.0 : wd, decoupled ? 1.0 - lr * wd : 1.0, 1.0 - beta1,
                          beta2, 1.0 - beta2, c.bias_correction2_sqrt(beta2, t_now),
                          -(lr / c.bias_correction1(beta1, t_now)), row[adam::kEps]});
    return false;
  }

  template <class C>
  struct Math {
    C grad_scale, grad_coef, l2, decay, lerp_coeff, beta2, one_minus_beta2, bc2_sqrt,
        neg_step_size, eps;
    bool use_l2, lerp_small;
    // Note [bf16 NaN check] (elementwise.h): a NaN in m, v or max_exp_avg_sq reaches p through
    // -step_size * m / (sqrt(v or max) / bc2 + eps), each op of which keeps a NaN operand (and
    // max_nan keeps v's), so the bf16 store tests p alone for all of them.
    static constexpr bool kNanReachesParam = true;

    explicit Math(const Scalars& t)
        : grad_scale(static_cast<C>(t.grad_scale)),
          grad_coef(static_cast<C>(t.grad_coef)),
          l2(static_cast<C>(t.l2)),
          decay(static_cast<C>(t.decay)),
          beta2(static_cast<C>(t.beta2)),
          one_minus_beta2(static_cast<C>(t.one_minus_beta2)),
          bc2_sqrt(static_cast<C>(t.bias_correction2_sqrt)),
          neg_step_size(static_cast<C>(t.neg_step_size)),
          eps(static_cast<C>(t.eps)),
          use_l2(t.l2 != 0) {
      C w = static_cast<C>(t.lerp_weight);
      lerp_small = std::fabs(w) < C(0.5);
      lerp_coeff = lerp_small ? w : w - C(1);
    }

    // x: param, exp_avg, exp_avg_sq[, max_exp_avg_sq]
    template <class V, int K>
    void operator()(V g, V (&x)[K]) const {
      constexpr bool kAmsgrad = K == 4;
      V& p = x[0];
      V& m = x[1];
      V& v = x[2];
      g = g * V::set1(grad_scale) * V::set1(grad_coef);     // unscale, then clip (and maximize)
      if (use_l2) g = fma(p, V::set1(l2), g);                // grad.add(param, alpha=wd)
      p = p * V::set1(decay);                                // param.mul_(1 - lr*wd); 1 is exact
      m = fma(V::set1(lerp_coeff), g - m, select(lerp_small, m, g));          // lerp_
      v = fma(V::set1(one_minus_beta2) * g, g, v * V::set1(beta2));           // mul_, addcmul_
      V second = v;
      if constexpr (kAmsgrad) {
        x[3] = max_nan(x[3], v);                             // torch.maximum(max, v, out=max)
        second = x[3];
      }
      V denom = sqrt(second) / V::set1(bc2_sqrt) + V::set1(eps);
      p = p + (V::set1(neg_step_size) * m) / denom;          // addcdiv_(m, denom, -step_size)
    }
  };
};
