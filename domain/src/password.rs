//! Password rules. Hashing and history comparison happen at the edge (they
//! need the stored hashes); this module decides whether a candidate password
//! is acceptable under a tenant's policy.

use serde::Serialize;
use zxcvbn::matching::patterns::MatchPattern;

use crate::settings::{CharacterClass, PasswordPolicy};

/// One rule a password broke, with a stable code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PasswordViolation {
    pub rule: &'static str,
    pub detail: String,
}

fn has_class(password: &str, class: CharacterClass) -> bool {
    password.chars().any(|c| match class {
        CharacterClass::Lowercase => c.is_lowercase(),
        CharacterClass::Uppercase => c.is_uppercase(),
        CharacterClass::Digit => c.is_ascii_digit(),
        CharacterClass::Symbol => !c.is_alphanumeric() && !c.is_whitespace(),
    })
}

/// True when the password is on zxcvbn's list of common passwords (also with
/// case changes or l33t substitutions) or is built only from such guessable
/// patterns that zxcvbn rates it at most "somewhat guessable" (score 2).
fn is_common(password: &str, user_inputs: &[&str]) -> bool {
    let entropy = zxcvbn::zxcvbn(password, user_inputs);
    let whole_password_listed = entropy.sequence().iter().any(|m| {
        m.i == 0
            && m.j + 1 == password.chars().count()
            // zxcvbn keeps its dictionary enum private; its default variant
            // is the common-passwords list.
            && matches!(&m.pattern, MatchPattern::Dictionary(d)
                if d.dictionary_name == Default::default())
    });
    whole_password_listed || u8::from(entropy.score()) <= 2
}

/// Checks a candidate against the policy; `user_inputs` (username, e-mail)
/// make passwords built from them count as guessable.
pub fn check_password(
    policy: &PasswordPolicy,
    password: &str,
    user_inputs: &[&str],
) -> Vec<PasswordViolation> {
    let mut violations = Vec::new();
    if password.is_empty() {
        violations.push(PasswordViolation {
            rule: "min_length",
            detail: "must not be empty".into(),
        });
        return violations;
    }
    if password.len() > 256 {
        violations.push(PasswordViolation {
            rule: "max_length",
            detail: "must be at most 256 bytes".into(),
        });
        return violations;
    }
    if !policy.rules_enabled {
        return violations;
    }
    if (password.chars().count() as u32) < policy.min_length {
        violations.push(PasswordViolation {
            rule: "min_length",
            detail: format!("must be at least {} characters long", policy.min_length),
        });
    }
    if policy.reject_numeric_only && password.chars().all(|c| c.is_ascii_digit()) {
        violations.push(PasswordViolation {
            rule: "numeric_only",
            detail: "must not consist of digits only".into(),
        });
    }
    let missing: Vec<_> = policy
        .required_classes
        .iter()
        .filter(|class| !has_class(password, **class))
        .map(|class| match class {
            CharacterClass::Lowercase => "a lowercase letter",
            CharacterClass::Uppercase => "an uppercase letter",
            CharacterClass::Digit => "a digit",
            CharacterClass::Symbol => "a symbol",
        })
        .collect();
    if !missing.is_empty() {
        violations.push(PasswordViolation {
            rule: "character_classes",
            detail: format!("must contain {}", missing.join(", ")),
        });
    }
    if policy.reject_common && is_common(password, user_inputs) {
        violations.push(PasswordViolation {
            rule: "common",
            detail: "is a common password or too easy to guess".into(),
        });
    }
    violations
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(password: &str) -> Vec<&'static str> {
        check_password(&PasswordPolicy::default(), password, &["alice"])
            .into_iter()
            .map(|v| v.rule)
            .collect()
    }

    #[test]
    fn a_strong_password_passes() {
        assert!(rules("Tr0ub4dor&3-staple").is_empty());
    }

    #[test]
    fn short_passwords_break_min_length() {
        assert!(rules("aB3$xy").contains(&"min_length"));
    }

    #[test]
    fn numeric_only_is_named() {
        assert!(rules("8302917465120").contains(&"numeric_only"));
    }

    #[test]
    fn missing_classes_are_named() {
        let v = check_password(&PasswordPolicy::default(), "kestrel-orbit-quilt", &[]);
        let classes = v.iter().find(|v| v.rule == "character_classes").unwrap();
        assert!(classes.detail.contains("an uppercase letter"));
        assert!(classes.detail.contains("a digit"));
        assert!(!classes.detail.contains("a symbol"));
    }

    #[test]
    fn listed_passwords_are_common_even_with_classes_satisfied() {
        assert_eq!(rules("P@ssw0rd1!"), ["common"]);
        assert_eq!(rules("Alice2024!"), ["common"]);
    }

    #[test]
    fn disabled_rules_accept_anything_non_empty() {
        let policy = PasswordPolicy {
            rules_enabled: false,
            ..Default::default()
        };
        assert!(check_password(&policy, "1", &[]).is_empty());
        assert!(!check_password(&policy, "", &[]).is_empty());
    }
}
