//! Element types, reduction operators and the reduction kernels.
//! Every operator here is commutative bit for bit (for non-NaN values), which is what lets
//! the algorithms promise identical results on every rank.

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};

/// The element types a collective can carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    /// 32-bit IEEE float.
    F32,
    /// 64-bit IEEE float.
    F64,
    /// 32-bit signed integer (wrapping arithmetic).
    I32,
    /// 64-bit signed integer (wrapping arithmetic).
    I64,
    /// 8-bit unsigned integer (wrapping arithmetic).
    U8,
}

impl DType {
    /// Every type, in wire-code order.
    pub const ALL: [DType; 5] = [DType::F32, DType::F64, DType::I32, DType::I64, DType::U8];

    /// Size of one element in bytes.
    pub fn size(self) -> usize {
        match self {
            DType::F32 | DType::I32 => 4,
            DType::F64 | DType::I64 => 8,
            DType::U8 => 1,
        }
    }

    /// The name used on the command line and in output (`f32`, `i64`, ...).
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F64 => "f64",
            DType::I32 => "i32",
            DType::I64 => "i64",
            DType::U8 => "u8",
        }
    }

    /// Code carried in frame headers (0 means "no element type", e.g. a barrier).
    pub(crate) fn wire_code(self) -> u8 {
        match self {
            DType::F32 => 1,
            DType::F64 => 2,
            DType::I32 => 3,
            DType::I64 => 4,
            DType::U8 => 5,
        }
    }

    pub(crate) fn from_wire_code(code: u8) -> Option<DType> {
        DType::ALL.into_iter().find(|d| d.wire_code() == code)
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for DType {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        DType::ALL
            .into_iter()
            .find(|d| d.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| format!("unknown element type {s:?}; expected one of f32, f64, i32, i64, u8"))
    }
}

/// Reduction operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReduceOp {
    /// Sum (wrapping for integers).
    Sum,
    /// Product (wrapping for integers).
    Prod,
    /// Minimum. For floats NaN wins and -0.0 is below +0.0.
    Min,
    /// Maximum. For floats NaN wins and +0.0 is above -0.0.
    Max,
}

impl ReduceOp {
    /// Every operator, in wire-code order.
    pub const ALL: [ReduceOp; 4] = [ReduceOp::Sum, ReduceOp::Prod, ReduceOp::Min, ReduceOp::Max];

    /// The name used on the command line and in output.
    pub fn name(self) -> &'static str {
        match self {
            ReduceOp::Sum => "sum",
            ReduceOp::Prod => "prod",
            ReduceOp::Min => "min",
            ReduceOp::Max => "max",
        }
    }

    pub(crate) fn wire_code(self) -> u8 {
        match self {
            ReduceOp::Sum => 1,
            ReduceOp::Prod => 2,
            ReduceOp::Min => 3,
            ReduceOp::Max => 4,
        }
    }

    pub(crate) fn from_wire_code(code: u8) -> Option<ReduceOp> {
        ReduceOp::ALL.into_iter().find(|o| o.wire_code() == code)
    }
}

impl fmt::Display for ReduceOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for ReduceOp {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        ReduceOp::ALL
            .into_iter()
            .find(|o| o.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| format!("unknown reduction {s:?}; expected one of sum, prod, min, max"))
    }
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for f64 {}
    impl Sealed for i32 {}
    impl Sealed for i64 {}
    impl Sealed for u8 {}
}

/// A type the collectives can carry and reduce. Implemented for `f32`, `f64`, `i32`, `i64`
/// and `u8`; sealed because the wire format names each type.
pub trait Element: bytemuck::Pod + PartialEq + fmt::Debug + Send + Sync + sealed::Sealed + 'static {
    /// The type's tag on the wire and in output.
    const DTYPE: DType;

    /// `op(a, b)`. Commutative bit for bit except for NaN payloads.
    fn combine(op: ReduceOp, a: Self, b: Self) -> Self;

    /// A small integer as this type (exact for every type and every `u8`).
    fn from_u8(v: u8) -> Self;
}

macro_rules! float_element {
    ($t:ty, $d:expr) => {
        impl Element for $t {
            const DTYPE: DType = $d;
            #[inline(always)]
            fn combine(op: ReduceOp, a: Self, b: Self) -> Self {
                match op {
                    ReduceOp::Sum => a + b,
                    ReduceOp::Prod => a * b,
                    ReduceOp::Min => {
                        // Not `f32::min`: it returns either zero for min(-0, +0) depending on
                        // operand order, which would make ranks disagree bit for bit.
                        if a < b {
                            a
                        } else if b < a {
                            b
                        } else if a.is_nan() {
                            a
                        } else if b.is_nan() || b.is_sign_negative() {
                            b
                        } else {
                            a
                        }
                    }
                    ReduceOp::Max => {
                        if a > b {
                            a
                        } else if b > a {
                            b
                        } else if a.is_nan() {
                            a
                        } else if b.is_nan() || b.is_sign_positive() {
                            b
                        } else {
                            a
                        }
                    }
                }
            }
            fn from_u8(v: u8) -> Self {
                <$t>::from(v)
            }
        }
    };
}

macro_rules! int_element {
    ($t:ty, $d:expr) => {
        impl Element for $t {
            const DTYPE: DType = $d;
            #[inline(always)]
            fn combine(op: ReduceOp, a: Self, b: Self) -> Self {
                match op {
                    ReduceOp::Sum => a.wrapping_add(b),
                    ReduceOp::Prod => a.wrapping_mul(b),
                    ReduceOp::Min => Ord::min(a, b),
                    ReduceOp::Max => Ord::max(a, b),
                }
            }
            fn from_u8(v: u8) -> Self {
                <$t>::from(v)
            }
        }
    };
}

float_element!(f32, DType::F32);
float_element!(f64, DType::F64);
int_element!(i32, DType::I32);
int_element!(i64, DType::I64);
int_element!(u8, DType::U8);

/// `dst[i] = op(dst[i], src[i])` over the common length.
///
/// The `match` sits outside the loop so that each arm is a plain loop the compiler vectorises.
pub fn reduce_slice<T: Element>(op: ReduceOp, dst: &mut [T], src: &[T]) {
    macro_rules! lane {
        ($o:expr) => {
            for (d, s) in dst.iter_mut().zip(src) {
                *d = T::combine($o, *d, *s);
            }
        };
    }
    match op {
        ReduceOp::Sum => lane!(ReduceOp::Sum),
        ReduceOp::Prod => lane!(ReduceOp::Prod),
        ReduceOp::Min => lane!(ReduceOp::Min),
        ReduceOp::Max => lane!(ReduceOp::Max),
    }
}

/// A type-erased reduction over byte slices that hold whole, aligned elements.
pub(crate) type ByteReducer = fn(ReduceOp, &mut [u8], &[u8]) -> Result<()>;

fn reduce_bytes<T: Element>(op: ReduceOp, dst: &mut [u8], src: &[u8]) -> Result<()> {
    let dst: &mut [T] = bytemuck::try_cast_slice_mut(dst)
        .map_err(|e| Error::InvalidArgument(format!("reduction target not {} aligned: {e}", T::DTYPE)))?;
    let src: &[T] = bytemuck::try_cast_slice(src)
        .map_err(|e| Error::InvalidArgument(format!("reduction source not {} aligned: {e}", T::DTYPE)))?;
    reduce_slice(op, dst, src);
    Ok(())
}

/// The byte-level reducer for `T`.
pub(crate) fn byte_reducer<T: Element>() -> ByteReducer {
    reduce_bytes::<T>
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn float_min_max_are_commutative_on_signed_zero_and_nan() {
        let pairs = [(0.0f32, -0.0f32), (-0.0, 0.0), (1.0, f32::NAN), (f32::NAN, 1.0), (2.0, 3.0)];
        for (a, b) in pairs {
            for op in [ReduceOp::Min, ReduceOp::Max] {
                let x = f32::combine(op, a, b);
                let y = f32::combine(op, b, a);
                assert_eq!(x.to_bits(), y.to_bits(), "{op} of {a} and {b}");
            }
        }
        assert!(f32::combine(ReduceOp::Min, 0.0, -0.0).is_sign_negative());
        assert!(f32::combine(ReduceOp::Max, -0.0, 0.0).is_sign_positive());
        assert!(f64::combine(ReduceOp::Min, f64::NAN, 1.0).is_nan());
        assert_eq!(f64::combine(ReduceOp::Max, -5.0, 2.0), 2.0);
    }

    #[test]
    fn integer_ops_wrap() {
        assert_eq!(u8::combine(ReduceOp::Sum, 250, 10), 4);
        assert_eq!(i32::combine(ReduceOp::Prod, i32::MAX, 2), -2);
        assert_eq!(i64::combine(ReduceOp::Min, -3, 7), -3);
        assert_eq!(u8::combine(ReduceOp::Max, 3, 7), 7);
    }

    #[test]
    fn reduce_slice_applies_elementwise() {
        let mut d = vec![1i32, 5, -2, 8];
        reduce_slice(ReduceOp::Max, &mut d, &[3, 4, -1, 9]);
        assert_eq!(d, [3, 5, -1, 9]);
        let mut d = vec![1.5f64, 2.0];
        reduce_slice(ReduceOp::Prod, &mut d, &[2.0, 0.25]);
        assert_eq!(d, [3.0, 0.5]);
    }

    #[test]
    fn byte_reducer_rejects_misaligned_input() {
        let mut words = vec![0u64; 4];
        let bytes: &mut [u8] = bytemuck::cast_slice_mut(&mut words);
        let src = [0u8; 5];
        let r = byte_reducer::<f32>()(ReduceOp::Sum, &mut bytes[1..9], &src[..]);
        assert!(r.is_err());
    }

    #[test]
    fn names_round_trip() {
        for d in DType::ALL {
            assert_eq!(d.name().parse::<DType>().unwrap(), d);
            assert_eq!(DType::from_wire_code(d.wire_code()), Some(d));
        }
        for o in ReduceOp::ALL {
            assert_eq!(o.name().parse::<ReduceOp>().unwrap(), o);
            assert_eq!(ReduceOp::from_wire_code(o.wire_code()), Some(o));
        }
        assert!("f16".parse::<DType>().is_err());
        assert!("avg".parse::<ReduceOp>().is_err());
    }
}
