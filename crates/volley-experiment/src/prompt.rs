//! Prompts: minijinja templates over a row's fields (and, for a judge, the answer),
//! rendered into chat messages. Undefined values are errors, and the error names the
//! field that is missing: a typo in a template must not send a thousand empty prompts.

use minijinja::{Environment, ErrorKind, UndefinedBehavior};
use serde_json::{Map, Value};

use crate::plan::PromptSpec;

/// Why a prompt cannot be used or rendered.
#[derive(Debug, thiserror::Error)]
pub enum PromptError {
    #[error("prompt \"{prompt}\" ({part}): {message}")]
    Template {
        prompt: String,
        part: &'static str,
        message: String,
    },
    #[error("prompt \"{prompt}\" ({part}): no field \"{field}\" in {what}")]
    Missing {
        prompt: String,
        part: &'static str,
        field: String,
        what: &'static str,
    },
}

const SYSTEM: &str = "system";
const USER: &str = "user";

/// A prompt's templates, compiled once.
pub struct Prompt {
    name: String,
    env: Environment<'static>,
    has_system: bool,
}

impl std::fmt::Debug for Prompt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prompt").field("name", &self.name).finish()
    }
}

impl Prompt {
    /// Compiles `spec`'s templates; a syntax error names the prompt, the part and the
    /// template's line.
    pub fn new(spec: &PromptSpec) -> Result<Prompt, PromptError> {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        // Prompts are plain text: no HTML escaping, and the text kept as written.
        env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
        let mut syntax = minijinja::syntax::SyntaxConfig::builder();
        syntax.keep_trailing_newline(true);
        if let Ok(syntax) = syntax.build() {
            env.set_syntax(syntax);
        }
        let compile = |env: &mut Environment<'static>, part: &'static str, text: &str| {
            env.add_template_owned(part, text.to_owned())
                .map_err(|e| PromptError::Template {
                    prompt: spec.name.clone(),
                    part,
                    message: describe(&e),
                })
        };
        compile(&mut env, USER, &spec.user)?;
        if let Some(system) = &spec.system {
            compile(&mut env, SYSTEM, system)?;
        }
        Ok(Prompt {
            name: spec.name.clone(),
            env,
            has_system: spec.system.is_some(),
        })
    }

    /// The chat messages for `context` (a JSON object); `what` says what the context
    /// is in an error ("the row", "the row or the answer").
    pub fn messages(
        &self,
        context: &Map<String, Value>,
        what: &'static str,
    ) -> Result<Vec<Value>, PromptError> {
        let ctx = minijinja::Value::from(minijinja::value::Serde(context));
        let mut messages = Vec::with_capacity(2);
        let parts: &[&'static str] = if self.has_system {
            &[SYSTEM, USER]
        } else {
            &[USER]
        };
        for &part in parts {
            let text = self.render(part, &ctx, context, what)?;
            messages.push(serde_json::json!({"role": part, "content": text}));
        }
        Ok(messages)
    }

    fn render(
        &self,
        part: &'static str,
        ctx: &minijinja::Value,
        context: &Map<String, Value>,
        what: &'static str,
    ) -> Result<String, PromptError> {
        let template = self
            .env
            .get_template(part)
            .map_err(|e| self.template_error(part, &e))?;
        template.render(ctx).map_err(|e| {
            if e.kind() == ErrorKind::UndefinedError {
                // Name the field: minijinja says only that a value was undefined.
                let mut names: Vec<String> =
                    template.undeclared_variables(true).into_iter().collect();
                names.sort();
                if let Some(field) = names.into_iter().find(|n| !has_path(context, n)) {
                    return PromptError::Missing {
                        prompt: self.name.clone(),
                        part,
                        field,
                        what,
                    };
                }
            }
            self.template_error(part, &e)
        })
    }

    fn template_error(&self, part: &'static str, e: &minijinja::Error) -> PromptError {
        PromptError::Template {
            prompt: self.name.clone(),
            part,
            message: describe(e),
        }
    }
}

/// minijinja's error with the template line it points at.
fn describe(e: &minijinja::Error) -> String {
    match (e.detail(), e.line()) {
        (Some(detail), Some(line)) => format!("line {line}: {} ({detail})", e.kind()),
        (None, Some(line)) => format!("line {line}: {}", e.kind()),
        (Some(detail), None) => format!("{} ({detail})", e.kind()),
        (None, None) => e.kind().to_string(),
    }
}

/// Whether `context` has the dotted `path` (`row.question`); globals minijinja knows
/// (`range`, `loop`) are never reported missing.
fn has_path(context: &Map<String, Value>, path: &str) -> bool {
    let mut parts = path.split('.');
    let Some(first) = parts.next() else {
        return true;
    };
    if matches!(first, "range" | "loop" | "namespace" | "dict" | "debug") {
        return true;
    }
    let Some(mut value) = context.get(first) else {
        return false;
    };
    for part in parts {
        match value.get(part) {
            Some(v) => value = v,
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(system: Option<&str>, user: &str) -> PromptSpec {
        PromptSpec {
            name: "qa".into(),
            system: system.map(Into::into),
            user: user.into(),
        }
    }

    fn ctx(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn renders_system_and_user_without_escaping() {
        let p = Prompt::new(&spec(
            Some("Be brief."),
            "Q: {{ question }} <{{ row.n }}>\n",
        ))
        .unwrap();
        let m = p
            .messages(
                &ctx(serde_json::json!({"question": "a & b", "row": {"n": 2}})),
                "the row",
            )
            .unwrap();
        assert_eq!(
            m[0],
            serde_json::json!({"role": "system", "content": "Be brief."})
        );
        assert_eq!(m[1]["content"], "Q: a & b <2>\n");
    }

    #[test]
    fn a_missing_field_is_named() {
        let p = Prompt::new(&spec(None, "{{ question }} {{ row.answr }}")).unwrap();
        let err = p
            .messages(
                &ctx(serde_json::json!({"question": "q", "row": {"answer": 1}})),
                "the row",
            )
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "prompt \"qa\" (user): no field \"row.answr\" in the row"
        );
    }

    #[test]
    fn a_syntax_error_names_the_prompt_and_line() {
        let err = Prompt::new(&spec(Some("ok"), "line one\n{{ broken ")).unwrap_err();
        let shown = err.to_string();
        assert!(shown.starts_with("prompt \"qa\" (user): line 2"), "{shown}");
    }
}
