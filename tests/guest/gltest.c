/*
 * The real-guest test's Mesa program: a GLES 3 context through EGL on GBM (the render node, no
 * display), Mesa's iris driver only, 100 frames drawn into a framebuffer object with glFinish after
 * each, as an application's frame loop submits them. Every line it prints starts with "gltest:";
 * the last is "gltest: PASS" or a line with "FAIL".
 *
 *   gltest [RENDER_NODE [FRAMES]]
 *
 * The software GPU does not rasterise, so no pixel is checked: what is checked is that every batch
 * Mesa submits (its context setup, state, shaders, draws) runs without a GPU hang or an error.
 */
#include <EGL/egl.h>
#include <EGL/eglext.h>
#include <GLES3/gl32.h>
#include <fcntl.h>
#include <gbm.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define FAIL(...)                         \
    do {                                  \
        printf("gltest: FAIL " __VA_ARGS__); \
        printf("\n");                     \
        return 1;                         \
    } while (0)

static double now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

static GLuint shader(GLenum kind, const char *src)
{
    GLuint s = glCreateShader(kind);
    GLint ok = 0;
    glShaderSource(s, 1, &src, NULL);
    glCompileShader(s);
    glGetShaderiv(s, GL_COMPILE_STATUS, &ok);
    return ok ? s : 0;
}

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
    const char *node = argc > 1 ? argv[1] : "/dev/dri/renderD128";
    int frames = argc > 2 ? atoi(argv[2]) : 100;
    if (frames < 1 || frames > 100000)
        FAIL("frame count %d", frames);
    int fd = open(node, O_RDWR | O_CLOEXEC);
    if (fd < 0)
        FAIL("open %s", node);
    struct gbm_device *gbm = gbm_create_device(fd);
    if (!gbm)
        FAIL("gbm_create_device");
    PFNEGLGETPLATFORMDISPLAYEXTPROC get_display =
        (PFNEGLGETPLATFORMDISPLAYEXTPROC)eglGetProcAddress("eglGetPlatformDisplayEXT");
    if (!get_display)
        FAIL("no eglGetPlatformDisplayEXT");
    EGLDisplay dpy = get_display(EGL_PLATFORM_GBM_MESA, gbm, NULL);
    EGLint major = 0, minor = 0;
    if (dpy == EGL_NO_DISPLAY || !eglInitialize(dpy, &major, &minor))
        FAIL("eglInitialize (error %#x)", eglGetError());
    if (!eglBindAPI(EGL_OPENGL_ES_API))
        FAIL("eglBindAPI");
    const EGLint attrs[] = {EGL_CONTEXT_MAJOR_VERSION, 3, EGL_CONTEXT_MINOR_VERSION, 2, EGL_NONE};
    double t0 = now_ms();
    EGLContext ctx = eglCreateContext(dpy, EGL_NO_CONFIG_KHR, EGL_NO_CONTEXT, attrs);
    if (ctx == EGL_NO_CONTEXT)
        FAIL("eglCreateContext GLES 3.2 (error %#x)", eglGetError());
    if (!eglMakeCurrent(dpy, EGL_NO_SURFACE, EGL_NO_SURFACE, ctx))
        FAIL("eglMakeCurrent (error %#x)", eglGetError());
    const char *renderer = (const char *)glGetString(GL_RENDERER);
    printf("gltest: EGL %d.%d, %s, %s\n", major, minor, (const char *)glGetString(GL_VERSION),
           renderer ? renderer : "?");
    if (!renderer || !strstr(renderer, "Intel"))
        FAIL("the renderer is not Mesa's Intel driver");

    GLuint rb, fb;
    glGenRenderbuffers(1, &rb);
    glBindRenderbuffer(GL_RENDERBUFFER, rb);
    glRenderbufferStorage(GL_RENDERBUFFER, GL_RGBA8, 256, 256);
    glGenFramebuffers(1, &fb);
    glBindFramebuffer(GL_FRAMEBUFFER, fb);
    glFramebufferRenderbuffer(GL_FRAMEBUFFER, GL_COLOR_ATTACHMENT0, GL_RENDERBUFFER, rb);
    if (glCheckFramebufferStatus(GL_FRAMEBUFFER) != GL_FRAMEBUFFER_COMPLETE)
        FAIL("framebuffer incomplete");
    GLuint vs = shader(GL_VERTEX_SHADER,
                       "#version 300 es\n"
                       "uniform float t;\n"
                       "void main() {\n"
                       "  vec2 p[3] = vec2[3](vec2(-1.0, -1.0), vec2(3.0, -1.0), vec2(-1.0, 3.0));\n"
                       "  gl_Position = vec4(p[gl_VertexID] * (0.5 + 0.5 * sin(t)), 0.0, 1.0);\n"
                       "}\n");
    GLuint fs = shader(GL_FRAGMENT_SHADER,
                       "#version 300 es\n"
                       "precision mediump float;\n"
                       "uniform highp float t;\n"
                       "out vec4 color;\n"
                       "void main() { color = vec4(fract(t), 0.5, 0.25, 1.0); }\n");
    if (!vs || !fs)
        FAIL("shader compile");
    GLuint prog = glCreateProgram();
    glAttachShader(prog, vs);
    glAttachShader(prog, fs);
    glLinkProgram(prog);
    GLint linked = 0;
    glGetProgramiv(prog, GL_LINK_STATUS, &linked);
    if (!linked) {
        char log[512] = "";
        glGetProgramInfoLog(prog, sizeof log, NULL, log);
        FAIL("program link: %s", log);
    }
    glUseProgram(prog);
    GLint t_loc = glGetUniformLocation(prog, "t");
    GLuint vao;
    glGenVertexArrays(1, &vao);
    glBindVertexArray(vao);
    glViewport(0, 0, 256, 256);
    printf("gltest: context and program ready in %.0f ms\n", now_ms() - t0);

    double *ms = calloc((size_t)frames, sizeof(double));
    if (!ms)
        FAIL("calloc");
    for (int i = 0; i < frames; i++) {
        double start = now_ms();
        glClearColor(0.1f * (i % 10), 0.2f, 0.3f, 1.0f);
        glClear(GL_COLOR_BUFFER_BIT);
        glUniform1f(t_loc, (float)i * 0.1f);
        glDrawArrays(GL_TRIANGLES, 0, 3);
        glFinish();
        ms[i] = now_ms() - start;
    }
    GLenum err = glGetError();
    if (err != GL_NO_ERROR)
        FAIL("GL error %#x", err);
    double first = ms[0];
    qsort(ms, (size_t)frames, sizeof(double), cmp);
    printf("gltest: frames %d: first %.1f ms, p50 %.1f ms, max %.1f ms\n", frames, first, ms[frames / 2],
           ms[frames - 1]);
    eglMakeCurrent(dpy, EGL_NO_SURFACE, EGL_NO_SURFACE, EGL_NO_CONTEXT);
    eglDestroyContext(dpy, ctx);
    eglTerminate(dpy);
    gbm_device_destroy(gbm);
    close(fd);
    printf("gltest: PASS\n");
    return 0;
}
